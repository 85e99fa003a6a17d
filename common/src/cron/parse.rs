//! Text to [`Spec`]: fields, lists, ranges, steps, names and the Quartz
//! day specials.

use super::error::CronError;
use super::spec::{Bits, DayCombine, Dialect, DomSpec, DowSpec, FieldKind, Spec, MIN_YEAR};

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const QUARTZ_FIELDS: [FieldKind; 7] = [
    FieldKind::Second,
    FieldKind::Minute,
    FieldKind::Hour,
    FieldKind::DayOfMonth,
    FieldKind::Month,
    FieldKind::DayOfWeek,
    FieldKind::Year,
];
const CRONTAB_FIELDS: [FieldKind; 5] = [
    FieldKind::Minute,
    FieldKind::Hour,
    FieldKind::DayOfMonth,
    FieldKind::Month,
    FieldKind::DayOfWeek,
];

/// The crontab expression a macro stands for.
fn expand_macro(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

/// One field, parsed.
#[derive(Default)]
struct Field {
    /// Plain values as indices: years minus [`MIN_YEAR`], weekdays 0 = Sunday.
    values: Bits,
    dom: DomSpec,
    dow: DowSpec,
    /// Exactly `*` or `?`.
    unrestricted: bool,
}

struct Context {
    kind: FieldKind,
    dialect: Dialect,
    lo: u32,
    hi: u32,
}

impl Context {
    /// A value as the user writes it: a number or, in month and
    /// day-of-week, a name.
    fn value(&self, token: &str) -> Result<u32, String> {
        if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
            let value: u32 = token
                .parse()
                .map_err(|_| format!("{token} is outside {}-{}", self.lo, self.hi))?;
            if value < self.lo || value > self.hi {
                return Err(format!("{value} is outside {}-{}", self.lo, self.hi));
            }
            return Ok(value);
        }
        let names: &[&str] = match self.kind {
            FieldKind::Month => &MONTH_NAMES,
            FieldKind::DayOfWeek => &DAY_NAMES,
            _ => &[],
        };
        if let Some(i) = names.iter().position(|n| *n == token) {
            let first = match (self.kind, self.dialect) {
                (FieldKind::Month, _) | (FieldKind::DayOfWeek, Dialect::Quartz) => 1,
                _ => 0,
            };
            return Ok(first + i as u32);
        }
        Err(match self.kind {
            FieldKind::Month => format!("`{token}` is not a number or a month name (JAN-DEC)"),
            FieldKind::DayOfWeek => format!("`{token}` is not a number or a day name (SUN-SAT)"),
            _ => format!("`{token}` is not a number"),
        })
    }

    /// A user value to the index stored in [`Bits`].
    fn index(&self, value: u32) -> u32 {
        match (self.kind, self.dialect) {
            (FieldKind::Year, _) => value - MIN_YEAR as u32,
            (FieldKind::DayOfWeek, Dialect::Quartz) => value - 1,
            (FieldKind::DayOfWeek, Dialect::Crontab) => value % 7,
            _ => value,
        }
    }

    fn weekday(&self, token: &str) -> Result<u32, String> {
        self.value(token).map(|v| self.index(v))
    }

    fn number(&self, token: &str, what: &str, lo: u32, hi: u32) -> Result<u32, String> {
        match token.parse::<u32>() {
            Ok(n) if (lo..=hi).contains(&n) && token.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(format!("{what} `{token}` must be a number in {lo}-{hi}")),
        }
    }

    fn item(&self, item: &str, field: &mut Field) -> Result<(), String> {
        if item.is_empty() {
            return Err("empty list item".to_string());
        }
        if item == "?" {
            return Err("`?` must be the whole field".to_string());
        }
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => {
                let size = self.hi - self.lo + 1;
                let step = self.number(step, "step", 1, size).map_err(|e| {
                    if step == "0" {
                        format!("step 0 in `{item}`: a step must be at least 1")
                    } else {
                        e
                    }
                })?;
                (base, Some(step))
            }
            None => (item, None),
        };
        if self.special(base, field)? {
            if step.is_some() {
                return Err(format!("`{item}`: a step cannot follow L, W or #"));
            }
            return Ok(());
        }
        let (start, end) = if base == "*" {
            (self.lo, self.hi)
        } else if let Some((a, b)) = base.split_once('-') {
            (self.value(a)?, self.value(b)?)
        } else {
            let v = self.value(base)?;
            (v, if step.is_some() { self.hi } else { v })
        };
        let step = step.unwrap_or(1);
        // A range whose end is below its start wraps around (`22-2` for
        // hours, `FRI-MON` for days), as in Quartz.
        let span = if end >= start {
            end - start
        } else {
            end + (self.hi - self.lo + 1) - start
        };
        let mut offset = 0;
        while offset <= span {
            let mut value = start + offset;
            if value > self.hi {
                value -= self.hi - self.lo + 1;
            }
            field.values.insert(self.index(value));
            offset += step;
        }
        Ok(())
    }

    /// `L`, `L-n`, `LW`, `nW` in day-of-month; `L`, `nL`, `n#k` in
    /// day-of-week. Returns whether `base` was one of them.
    fn special(&self, base: &str, field: &mut Field) -> Result<bool, String> {
        match self.kind {
            FieldKind::DayOfMonth => {
                if base == "L" {
                    field.dom.last_offsets.push(0);
                } else if base == "LW" {
                    field.dom.last_weekday = true;
                } else if let Some(offset) = base.strip_prefix("L-") {
                    let offset = self.number(offset, "offset from the last day", 0, 30)?;
                    field.dom.last_offsets.push(offset);
                } else if let Some(day) = base.strip_suffix('W') {
                    let day = self.number(day, "day before W", 1, 31)?;
                    field.dom.nearest_weekdays.push(day);
                } else if base.contains(['L', 'W', '#']) {
                    return Err(format!(
                        "`{base}` is not a day: use a number, L, L-n, nW or LW"
                    ));
                } else {
                    return Ok(false);
                }
                Ok(true)
            }
            FieldKind::DayOfWeek => {
                if base == "L" {
                    // A lone L in day-of-week is the last day of the week.
                    field.values.insert(6);
                } else if let Some((day, nth)) = base.split_once('#') {
                    let weekday = self.weekday(day)?;
                    let nth = self.number(nth, "occurrence after #", 1, 5)?;
                    field.dow.nth.push((weekday, nth));
                } else if let Some(day) = base.strip_suffix('L') {
                    let weekday = self.weekday(day)?;
                    field.dow.last_of |= 1 << weekday;
                } else {
                    return Ok(false);
                }
                Ok(true)
            }
            _ => {
                let digits_then = |suffix: char| {
                    base.strip_suffix(suffix)
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                };
                let looks_special = base == "L"
                    || base == "LW"
                    || base.starts_with("L-")
                    || base.contains('#')
                    || digits_then('L')
                    || digits_then('W');
                if looks_special {
                    return Err(format!(
                        "`{base}`: L, W and # are only allowed in day-of-month and day-of-week"
                    ));
                }
                Ok(false)
            }
        }
    }

    fn field(&self, text: &str) -> Result<Field, String> {
        let text = text.to_ascii_uppercase();
        let mut field = Field {
            unrestricted: text == "*" || text == "?",
            ..Field::default()
        };
        if text == "?" {
            if !matches!(self.kind, FieldKind::DayOfMonth | FieldKind::DayOfWeek) {
                return Err("`?` is only allowed in day-of-month and day-of-week".to_string());
            }
            return Ok(field);
        }
        for item in text.split(',') {
            self.item(item, &mut field)?;
        }
        Ok(field)
    }
}

/// Parses an expression in either dialect, or a macro.
pub(crate) fn parse_expression(expression: &str) -> Result<Spec, CronError> {
    let trimmed = expression.trim();
    if trimmed.is_empty() {
        return Err(CronError::Empty);
    }
    if trimmed.starts_with('@') {
        let expanded =
            expand_macro(trimmed).ok_or_else(|| CronError::UnknownMacro(trimmed.to_string()))?;
        return parse_expression(expanded);
    }
    let texts: Vec<&str> = trimmed.split_whitespace().collect();
    let (dialect, kinds): (Dialect, &[FieldKind]) = match texts.len() {
        5 => (Dialect::Crontab, &CRONTAB_FIELDS),
        6 | 7 => (Dialect::Quartz, &QUARTZ_FIELDS[..texts.len()]),
        found => {
            return Err(CronError::FieldCount {
                found,
                expression: trimmed.to_string(),
            })
        }
    };

    let mut seconds = Bits::default();
    seconds.insert(0);
    let mut years = Bits::default();
    for i in 0..(FieldKind::Year.range(dialect).1 - MIN_YEAR as u32 + 1) {
        years.insert(i);
    }
    let mut spec = Spec {
        dialect,
        seconds,
        minutes: Bits::default(),
        hours: Bits::default(),
        months: Bits::default(),
        years,
        years_restricted: false,
        dom: None,
        dow: None,
        combine: DayCombine::And,
    };
    let (dom_position, dow_position) = match dialect {
        Dialect::Quartz => (4, 6),
        Dialect::Crontab => (3, 5),
    };
    let mut dom = Field::default();
    let mut dow = Field::default();
    for (i, (&kind, &text)) in kinds.iter().zip(&texts).enumerate() {
        let (lo, hi) = kind.range(dialect);
        let context = Context {
            kind,
            dialect,
            lo,
            hi,
        };
        let field = context.field(text).map_err(|problem| CronError::Field {
            position: i + 1,
            name: kind.name(),
            field: text.to_string(),
            problem,
        })?;
        match kind {
            FieldKind::Second => spec.seconds = field.values,
            FieldKind::Minute => spec.minutes = field.values,
            FieldKind::Hour => spec.hours = field.values,
            FieldKind::Month => spec.months = field.values,
            FieldKind::Year => {
                spec.years_restricted = !field.unrestricted;
                spec.years = field.values;
            }
            FieldKind::DayOfMonth => dom = field,
            FieldKind::DayOfWeek => dow = field,
        }
    }
    let day_error = |problem: &str| CronError::DayFields {
        dom_position,
        dow_position,
        problem: problem.to_string(),
    };
    let dom_text = texts[dom_position - 1];
    let dow_text = texts[dow_position - 1];
    match dialect {
        Dialect::Quartz => {
            if dom_text == "?" && dow_text == "?" {
                return Err(day_error(
                    "only one of them may be `?`; put `*` in the other",
                ));
            }
            if !dom.unrestricted && !dow.unrestricted {
                return Err(day_error(
                    "both restrict the day; Quartz syntax needs `?` in one of them (the 5-field crontab form ORs them instead)",
                ));
            }
        }
        Dialect::Crontab => {
            // Vixie cron: a day matches either field if both restrict, but a
            // field that starts with `*` (`*/2` too) makes it "and". `?` is
            // `*` here.
            if !dom_text.starts_with(['*', '?']) && !dow_text.starts_with(['*', '?']) {
                spec.combine = DayCombine::Or;
            }
        }
    }
    if !dom.unrestricted {
        let mut spec_dom = dom.dom;
        spec_dom.days = dom.values;
        spec.dom = Some(spec_dom);
    }
    if !dow.unrestricted {
        let mut spec_dow = dow.dow;
        spec_dow.days = dow.values.low_byte() & 0x7f;
        spec.dow = Some(spec_dow);
    }
    Ok(spec)
}
