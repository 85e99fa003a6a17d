//! A parsed expression in plain English.

use chrono_tz::Tz;

use super::spec::{DayCombine, DomSpec, DowSpec, Spec, MAX_YEAR, MIN_YEAR};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

pub(crate) fn explain(spec: &Spec, zone: Tz) -> String {
    let mut parts = vec![time_phrase(spec)];
    parts.push(day_phrase(spec));
    let months: Vec<u32> = spec.months.iter().collect();
    if months.len() < 12 {
        let names = join(&runs(&months, |m| MONTHS[m as usize - 1].to_string()));
        parts.push(format!("in {names}"));
    }
    if spec.years_restricted {
        let years: Vec<u32> = spec.years.iter().map(|y| y + MIN_YEAR as u32).collect();
        let lo = MIN_YEAR as u32;
        let hi = MAX_YEAR as u32;
        parts.push(match unit_phrase(&years, lo, hi, "year", "years") {
            p if years.len() == 1 => format!("in {}", &p["year ".len()..]),
            p => format!("in {p}"),
        });
    }
    let zone = if zone == Tz::UTC {
        "UTC".to_string()
    } else {
        format!("{} time", zone.name())
    };
    format!("{} ({zone})", parts.join(", "))
}

fn time_phrase(spec: &Spec) -> String {
    let seconds: Vec<u32> = spec.seconds.iter().collect();
    let minutes: Vec<u32> = spec.minutes.iter().collect();
    let hours: Vec<u32> = spec.hours.iter().collect();
    if let ([s], [m], [h]) = (&seconds[..], &minutes[..], &hours[..]) {
        return if *s == 0 {
            format!("at {h:02}:{m:02}")
        } else {
            format!("at {h:02}:{m:02}:{s:02}")
        };
    }
    let all_minutes = minutes.len() == 60;
    let all_hours = hours.len() == 24;
    let second = unit_phrase(&seconds, 0, 59, "second", "seconds");
    let minute = unit_phrase(&minutes, 0, 59, "minute", "minutes");
    let hour = unit_phrase(&hours, 0, 23, "hour", "hours");
    let mut chain = vec![second];
    if !(all_minutes && all_hours) {
        chain.push(minute);
        chain.push(hour);
    } else if !chain[0].starts_with("every") {
        chain.push(minute);
    }
    let chain = chain.join(" of ");
    if chain.starts_with("every") {
        chain
    } else {
        format!("at {chain}")
    }
}

fn day_phrase(spec: &Spec) -> String {
    let dom = spec.dom.as_ref().map(dom_phrase);
    let dow = spec.dow.as_ref().map(dow_phrase);
    match (dom, dow) {
        (None, None) => "every day".to_string(),
        (Some(p), None) | (None, Some(p)) => format!("on {p}"),
        (Some(dom), Some(dow)) => match spec.combine {
            DayCombine::Or => format!("on {dom} or on {dow}"),
            DayCombine::And => format!("on {dom} if that is {dow}"),
        },
    }
}

fn dom_phrase(dom: &DomSpec) -> String {
    let mut phrases = Vec::new();
    let days: Vec<u32> = dom.days.iter().collect();
    if let Some((start, step, last)) = progression(&days, 31) {
        phrases.push(format!(
            "every {} day of the month from the {} through the {}",
            ordinal(step),
            ordinal(start),
            ordinal(last)
        ));
    } else if !days.is_empty() {
        let list = join(&runs(&days, |d| format!("the {}", ordinal(d))));
        phrases.push(format!("{list} of the month"));
    }
    for &offset in &dom.last_offsets {
        phrases.push(match offset {
            0 => "the last day of the month".to_string(),
            1 => "1 day before the last day of the month".to_string(),
            n => format!("{n} days before the last day of the month"),
        });
    }
    for &day in &dom.nearest_weekdays {
        phrases.push(format!("the weekday nearest the {}", ordinal(day)));
    }
    if dom.last_weekday {
        phrases.push("the last weekday of the month".to_string());
    }
    phrases.join(" or ")
}

fn dow_phrase(dow: &DowSpec) -> String {
    let mut phrases = Vec::new();
    let days: Vec<u32> = (0..7).filter(|d| dow.days & (1 << d) != 0).collect();
    match days[..] {
        [] => {}
        [1, 2, 3, 4, 5] => phrases.push("weekdays (Monday through Friday)".to_string()),
        [0, 6] => phrases.push("weekends (Saturday and Sunday)".to_string()),
        _ => phrases.push(join(&runs(&days, |d| WEEKDAYS[d as usize].to_string()))),
    }
    for (weekday, name) in WEEKDAYS.iter().enumerate() {
        if dow.last_of & (1 << weekday) != 0 {
            phrases.push(format!("the last {name} of the month"));
        }
    }
    for &(weekday, nth) in &dow.nth {
        let nth = ["first", "second", "third", "fourth", "fifth"][nth as usize - 1];
        phrases.push(format!(
            "the {nth} {} of the month",
            WEEKDAYS[weekday as usize]
        ));
    }
    phrases.join(" or ")
}

/// "every minute", "minute 5", "every 15 minutes", "every 10 minutes from 10
/// through 40", "minutes 1 through 5 and 30".
fn unit_phrase(values: &[u32], lo: u32, hi: u32, unit: &str, units: &str) -> String {
    if values.len() as u32 == hi - lo + 1 {
        return format!("every {unit}");
    }
    if let [value] = values {
        return format!("{unit} {value}");
    }
    if let Some((start, step, last)) = progression(values, hi) {
        return if start == lo {
            format!("every {step} {units}")
        } else {
            format!("every {step} {units} from {start} through {last}")
        };
    }
    format!("{units} {}", join(&runs(values, |v| v.to_string())))
}

/// `(start, step, last)` if `values` step evenly by more than 1 up to the
/// last value that fits below `hi`, as `*/n` or `a/n` make them.
fn progression(values: &[u32], hi: u32) -> Option<(u32, u32, u32)> {
    let [first, second, ..] = values[..] else {
        return None;
    };
    let step = second - first;
    let last = *values.last()?;
    let even = values.windows(2).all(|w| w[1] - w[0] == step);
    (step > 1 && even && values.len() >= 3 && last + step > hi).then_some((first, step, last))
}

/// Sorted values with runs of three or more as "a through b".
fn runs(values: &[u32], name: impl Fn(u32) -> String) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        if j >= i + 2 {
            out.push(format!("{} through {}", name(values[i]), name(values[j])));
        } else {
            out.extend(values[i..=j].iter().map(|&v| name(v)));
        }
        i = j + 1;
    }
    out
}

/// "a", "a and b", "a, b and c".
fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}
