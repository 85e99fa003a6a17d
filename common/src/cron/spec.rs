//! A parsed expression as sets of allowed values, and the day rules that
//! need the calendar (`L`, `W`, `#`).

use chrono::{Datelike, NaiveDate};

/// First year an expression can fire in.
pub(crate) const MIN_YEAR: i32 = 1970;
/// Last year an expression can fire in: the bound that makes a search for an
/// impossible expression end.
pub(crate) const MAX_YEAR: i32 = 2399;

/// A set of small non-negative integers (below 448), for one field's values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bits([u64; 7]);

impl Bits {
    pub(crate) const CAPACITY: u32 = 448;

    pub(crate) fn insert(&mut self, value: u32) {
        if value < Self::CAPACITY {
            self.0[(value / 64) as usize] |= 1 << (value % 64);
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, value: u32) -> bool {
        value < Self::CAPACITY && self.0[(value / 64) as usize] & (1 << (value % 64)) != 0
    }

    /// The smallest member at or above `from`.
    pub(crate) fn next_from(&self, from: u32) -> Option<u32> {
        if from >= Self::CAPACITY {
            return None;
        }
        let mut word = (from / 64) as usize;
        let mut bits = self.0[word] & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                return Some(word as u32 * 64 + bits.trailing_zeros());
            }
            word += 1;
            if word == self.0.len() {
                return None;
            }
            bits = self.0[word];
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut next = self.next_from(0);
        std::iter::from_fn(move || {
            let current = next?;
            next = self.next_from(current + 1);
            Some(current)
        })
    }

    /// Members below 8, as a byte.
    pub(crate) fn low_byte(&self) -> u8 {
        (self.0[0] & 0xff) as u8
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
}

/// Which syntax an expression was written in; it decides the day-of-week
/// numbering and how day-of-month and day-of-week combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Quartz: 6 or 7 fields starting with seconds; day-of-week 1-7 with
    /// 1 = Sunday; one of day-of-month and day-of-week must be `?` (or `*`).
    Quartz,
    /// Classic crontab: 5 fields starting with minutes, seconds are 0;
    /// day-of-week 0-7 with 0 and 7 = Sunday; a day matches if either day
    /// field matches when both are restricted.
    Crontab,
}

/// The seven fields, for error messages and value ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldKind {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

impl FieldKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            FieldKind::Second => "second",
            FieldKind::Minute => "minute",
            FieldKind::Hour => "hour",
            FieldKind::DayOfMonth => "day-of-month",
            FieldKind::Month => "month",
            FieldKind::DayOfWeek => "day-of-week",
            FieldKind::Year => "year",
        }
    }

    /// Inclusive range of values as the user writes them.
    pub(crate) fn range(self, dialect: Dialect) -> (u32, u32) {
        match self {
            FieldKind::Second | FieldKind::Minute => (0, 59),
            FieldKind::Hour => (0, 23),
            FieldKind::DayOfMonth => (1, 31),
            FieldKind::Month => (1, 12),
            FieldKind::DayOfWeek => match dialect {
                Dialect::Quartz => (1, 7),
                Dialect::Crontab => (0, 7),
            },
            FieldKind::Year => (MIN_YEAR as u32, MAX_YEAR as u32),
        }
    }
}

/// Day-of-month restrictions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DomSpec {
    /// Plain days 1-31.
    pub(crate) days: Bits,
    /// `L` (offset 0) and `L-n`: the last day of the month minus n.
    pub(crate) last_offsets: Vec<u32>,
    /// `nW`: the weekday nearest day n, within the month.
    pub(crate) nearest_weekdays: Vec<u32>,
    /// `LW`: the last weekday of the month.
    pub(crate) last_weekday: bool,
}

/// Day-of-week restrictions; weekdays are 0 = Sunday .. 6 = Saturday here
/// whatever the dialect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DowSpec {
    /// Plain weekdays, bit 0 = Sunday.
    pub(crate) days: u8,
    /// `nL`: the last such weekday of the month, bit 0 = Sunday.
    pub(crate) last_of: u8,
    /// `n#k`: the k-th such weekday of the month, as (weekday, k).
    pub(crate) nth: Vec<(u32, u32)>,
}

/// How day-of-month and day-of-week combine when both restrict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DayCombine {
    /// A day must match both (Quartz, and crontab when one field starts
    /// with `*`).
    And,
    /// A day must match either (crontab when both are restricted).
    Or,
}

/// A parsed expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) dialect: Dialect,
    pub(crate) seconds: Bits,
    pub(crate) minutes: Bits,
    pub(crate) hours: Bits,
    pub(crate) months: Bits,
    /// Years as offsets from [`MIN_YEAR`].
    pub(crate) years: Bits,
    /// Whether the year field restricts (for [`super::CronSchedule::explain`]).
    pub(crate) years_restricted: bool,
    /// `None`: every day of the month.
    pub(crate) dom: Option<DomSpec>,
    /// `None`: every day of the week.
    pub(crate) dow: Option<DowSpec>,
    pub(crate) combine: DayCombine,
}

pub(crate) fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub(crate) fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Weekday of the first of the month, 0 = Sunday.
fn first_weekday(year: i32, month: u32) -> u32 {
    NaiveDate::from_ymd_opt(year, month, 1)
        .map(|d| d.weekday().num_days_from_sunday())
        .unwrap_or(0)
}

impl DomSpec {
    /// Days of `year`-`month` this matches, bit d = day d.
    fn mask(&self, first_wd: u32, dim: u32) -> u32 {
        let weekday_of = |day: u32| (first_wd + day - 1) % 7;
        let valid = (u32::MAX >> (31 - dim)) & !1;
        let mut mask = (self.days.0[0] as u32) & valid;
        for &offset in &self.last_offsets {
            if offset < dim {
                mask |= 1 << (dim - offset);
            }
        }
        for &day in &self.nearest_weekdays {
            if day > dim {
                continue;
            }
            let nearest = match weekday_of(day) {
                6 if day == 1 => 3,
                6 => day - 1,
                0 if day == dim => day - 2,
                0 => day + 1,
                _ => day,
            };
            mask |= 1 << nearest;
        }
        if self.last_weekday {
            let last = match weekday_of(dim) {
                6 => dim - 1,
                0 => dim - 2,
                _ => dim,
            };
            mask |= 1 << last;
        }
        mask
    }
}

impl DowSpec {
    fn mask(&self, first_wd: u32, dim: u32) -> u32 {
        let mut mask = 0u32;
        for day in 1..=dim {
            if self.days & (1 << ((first_wd + day - 1) % 7)) != 0 {
                mask |= 1 << day;
            }
        }
        let last_wd = (first_wd + dim - 1) % 7;
        for weekday in 0..7 {
            if self.last_of & (1 << weekday) != 0 {
                mask |= 1 << (dim - (last_wd + 7 - weekday) % 7);
            }
        }
        for &(weekday, k) in &self.nth {
            let day = 1 + (weekday + 7 - first_wd) % 7 + 7 * (k - 1);
            if day <= dim {
                mask |= 1 << day;
            }
        }
        mask
    }
}

impl Spec {
    /// Days of `year`-`month` the expression fires on, bit d = day d.
    pub(crate) fn days_mask(&self, year: i32, month: u32) -> u32 {
        let dim = days_in_month(year, month);
        let first_wd = first_weekday(year, month);
        let all = (u32::MAX >> (31 - dim)) & !1;
        let dom = self.dom.as_ref().map(|d| d.mask(first_wd, dim));
        let dow = self.dow.as_ref().map(|d| d.mask(first_wd, dim));
        match (dom, dow) {
            (None, None) => all,
            (Some(m), None) | (None, Some(m)) => m,
            (Some(a), Some(b)) => match self.combine {
                DayCombine::And => a & b,
                DayCombine::Or => a | b,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_find_the_next_member_across_words() {
        let mut bits = Bits::default();
        for v in [0, 5, 63, 64, 200, 447] {
            bits.insert(v);
        }
        assert_eq!(bits.next_from(0), Some(0));
        assert_eq!(bits.next_from(6), Some(63));
        assert_eq!(bits.next_from(65), Some(200));
        assert_eq!(bits.next_from(201), Some(447));
        assert_eq!(bits.next_from(448), None);
        assert_eq!(bits.len(), 6);
        assert_eq!(
            bits.iter().collect::<Vec<_>>(),
            vec![0, 5, 63, 64, 200, 447]
        );
        assert!(bits.contains(200) && !bits.contains(201));
    }

    #[test]
    fn month_lengths() {
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2023, 4), 30);
        assert_eq!(days_in_month(2023, 12), 31);
    }
}
