//! Retry plans in the text form people type, e.g. on the command line:
//!
//! ```text
//! [retry, retry_after 1s, backoff 1s x2 max 1m, suspend, give_up] x3
//! [backoff 500ms x1.5 max 10m] forever
//! [give_up]
//! ```
//!
//! Steps are separated by commas inside brackets; after the brackets `xN`
//! runs the list N times, `forever` runs it without end, and nothing runs
//! it once. The steps:
//!
//! | step | meaning |
//! | --- | --- |
//! | `retry` | run again at once |
//! | `retry_after D` | run again after D |
//! | `backoff D xF max M` | run again after D times F to the power of the errors so far, at most M |
//! | `suspend` | park the job until an operator resumes it |
//! | `give_up` | fail the job |
//!
//! A duration is a whole number with a unit, `ms`, `s`, `m`, `h` or `d`,
//! and may chain several (`1m30s`). This is the form
//! [`RetryPlan`]'s `Display` prints, so a printed plan parses back to the
//! same plan.
//!
//! Parsing validates like [`crate::convert`] does for the wire form (1 to
//! [`MAX_RETRY_STEPS`] steps, factor at least 1, max at least base, count
//! at least 1 unless forever, delays at most [`MAX_DELAY_MS`]); a
//! [`PlanError`] names the offending token and its position.

use std::str::FromStr;

use crate::limits::{MAX_DELAY_MS, MAX_RETRY_STEPS};
use crate::model::{RetryPlan, RetryStep};

/// Why a retry plan's text was refused.
///
/// The `Display` text quotes the offending token and its 1-based character
/// position, e.g. ``at position 2 (`retri`): unknown step; expected retry,
/// retry_after, backoff, suspend or give_up``, so a CLI can print it as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at position {position} ({}): {problem}", describe_token(.token))]
pub struct PlanError {
    /// 1-based character position of the offending token; one past the end
    /// when the text ended too early.
    pub position: usize,
    /// The offending token as written; empty when the text ended too early.
    pub token: String,
    /// What is wrong.
    pub problem: String,
}

fn describe_token(token: &str) -> String {
    if token.is_empty() {
        "end of the plan".to_string()
    } else {
        format!("`{token}`")
    }
}

/// Parses a retry plan; see the [module docs](self) for the syntax.
pub fn parse_plan(text: &str) -> Result<RetryPlan, PlanError> {
    Parser::new(text).plan()
}

impl FromStr for RetryPlan {
    type Err = PlanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_plan(s)
    }
}

/// A piece of the text: a bracket, a comma, or a word (anything between
/// white space and punctuation, so a bad token is quoted whole).
#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    text: &'a str,
    /// 1-based character position.
    position: usize,
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    next: usize,
    /// Position just past the last character, for "ended too early".
    end_position: usize,
}

const STEP_NAMES: &str = "retry, retry_after, backoff, suspend or give_up";

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        let mut tokens = Vec::new();
        let mut word_start: Option<(usize, usize)> = None;
        let mut chars = 0;
        for (column, (byte, c)) in text.char_indices().enumerate() {
            chars = column + 1;
            let punctuation = matches!(c, '[' | ']' | ',');
            if c.is_whitespace() || punctuation {
                if let Some((start, position)) = word_start.take() {
                    tokens.push(Token {
                        text: &text[start..byte],
                        position,
                    });
                }
                if punctuation {
                    tokens.push(Token {
                        text: &text[byte..byte + c.len_utf8()],
                        position: column + 1,
                    });
                }
            } else if word_start.is_none() {
                word_start = Some((byte, column + 1));
            }
        }
        if let Some((start, position)) = word_start {
            tokens.push(Token {
                text: &text[start..],
                position,
            });
        }
        Parser {
            tokens,
            next: 0,
            end_position: chars + 1,
        }
    }

    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.next).copied()
    }

    fn advance(&mut self) -> Option<Token<'a>> {
        let token = self.peek();
        if token.is_some() {
            self.next += 1;
        }
        token
    }

    fn error_at(&self, token: Option<Token<'a>>, problem: impl Into<String>) -> PlanError {
        match token {
            Some(t) => PlanError {
                position: t.position,
                token: t.text.to_string(),
                problem: problem.into(),
            },
            None => PlanError {
                position: self.end_position,
                token: String::new(),
                problem: problem.into(),
            },
        }
    }

    fn expect(&mut self, text: &str, problem: &str) -> Result<Token<'a>, PlanError> {
        match self.advance() {
            Some(t) if t.text == text => Ok(t),
            other => Err(self.error_at(other, problem)),
        }
    }

    fn plan(mut self) -> Result<RetryPlan, PlanError> {
        if self.tokens.is_empty() {
            return Err(self.error_at(
                None,
                format!("the plan is empty; expected e.g. `[backoff 1s x2 max 1m] x3` with steps {STEP_NAMES}"),
            ));
        }
        self.expect("[", "expected `[` to open the list of steps")?;
        let mut steps = Vec::new();
        loop {
            let first = self.peek();
            if steps.len() == MAX_RETRY_STEPS {
                return Err(
                    self.error_at(first, format!("a plan has at most {MAX_RETRY_STEPS} steps"))
                );
            }
            if steps.is_empty() && first.is_some_and(|t| t.text == "]") {
                return Err(self.error_at(
                    first,
                    format!("the list of steps is empty; name at least one of {STEP_NAMES}"),
                ));
            }
            steps.push(self.step()?);
            match self.advance() {
                Some(t) if t.text == "," => continue,
                Some(t) if t.text == "]" => break,
                other => {
                    return Err(self.error_at(
                        other,
                        "expected `,` before the next step or `]` to close the list",
                    ))
                }
            }
        }
        let (count, forever) = self.repeat()?;
        if let Some(extra) = self.advance() {
            return Err(self.error_at(Some(extra), "unexpected text after the end of the plan"));
        }
        Ok(RetryPlan {
            steps,
            count,
            forever,
        })
    }

    fn step(&mut self) -> Result<RetryStep, PlanError> {
        let Some(name) = self.advance() else {
            return Err(self.error_at(None, format!("expected a step: {STEP_NAMES}")));
        };
        match name.text.to_ascii_lowercase().as_str() {
            "retry" => Ok(RetryStep::Retry),
            "retry_after" => Ok(RetryStep::RetryAfter(
                self.duration("retry_after's delay")?.0,
            )),
            "backoff" => {
                let (base_ms, _) = self.duration("backoff's first delay")?;
                let factor = self.factor()?;
                self.expect_keyword("max", "expected `max` and the longest delay, e.g. `max 1m`")?;
                let (max_ms, max_token) = self.duration("backoff's longest delay")?;
                if max_ms < base_ms {
                    return Err(self.error_at(
                        Some(max_token),
                        format!("the longest delay ({max_ms} ms) is shorter than the first ({base_ms} ms)"),
                    ));
                }
                Ok(RetryStep::Backoff {
                    base_ms,
                    factor,
                    max_ms,
                })
            }
            "suspend" => Ok(RetryStep::Suspend),
            "give_up" => Ok(RetryStep::GiveUp),
            "[" | "]" | "," => {
                Err(self.error_at(Some(name), format!("expected a step: {STEP_NAMES}")))
            }
            _ => Err(self.error_at(Some(name), format!("unknown step; expected {STEP_NAMES}"))),
        }
    }

    fn expect_keyword(&mut self, keyword: &str, problem: &str) -> Result<(), PlanError> {
        match self.advance() {
            Some(t) if t.text.eq_ignore_ascii_case(keyword) => Ok(()),
            other => Err(self.error_at(other, problem)),
        }
    }

    /// A duration token, with the token for later errors.
    fn duration(&mut self, what: &str) -> Result<(u64, Token<'a>), PlanError> {
        let token = self.advance();
        let Some(t) = token.filter(|t| !matches!(t.text, "[" | "]" | ",")) else {
            return Err(self.error_at(
                token,
                format!("expected {what}, a duration like 500ms, 1s, 2m or 1h"),
            ));
        };
        let ms = parse_duration_ms(t.text).map_err(|p| self.error_at(Some(t), p))?;
        if ms > MAX_DELAY_MS {
            return Err(self.error_at(
                Some(t),
                format!("{ms} ms is longer than the limit of {MAX_DELAY_MS} ms (365 days)"),
            ));
        }
        Ok((ms, t))
    }

    /// Backoff's growth factor: `x2`, `x1.5` or `x 2`.
    fn factor(&mut self) -> Result<f64, PlanError> {
        let expected = "expected the growth factor, e.g. `x2`";
        let token = self.advance();
        let Some(t) = token else {
            return Err(self.error_at(None, expected));
        };
        let number = match t.text.strip_prefix(['x', 'X']) {
            Some("") => match self.advance() {
                Some(n) => n,
                None => return Err(self.error_at(None, expected)),
            },
            Some(rest) => Token {
                text: rest,
                position: t.position,
            },
            None => return Err(self.error_at(Some(t), expected)),
        };
        match number.text.parse::<f64>() {
            Ok(f) if f.is_finite() && f >= 1.0 => Ok(f),
            Ok(_) => Err(self.error_at(Some(t), "the factor must be a number of at least 1")),
            Err(_) => Err(self.error_at(Some(t), expected)),
        }
    }

    /// What follows `]`: `xN`, `x N`, `forever` or nothing (once).
    fn repeat(&mut self) -> Result<(u32, bool), PlanError> {
        let Some(t) = self.advance() else {
            return Ok((1, false));
        };
        if t.text.eq_ignore_ascii_case("forever") {
            return Ok((0, true));
        }
        let expected = "expected `xN` (run the list N times) or `forever` after `]`";
        let (number, at) = match t.text.strip_prefix(['x', 'X']) {
            Some("") => match self.advance() {
                Some(n) => (n.text, n),
                None => return Err(self.error_at(None, expected)),
            },
            Some(rest) => (rest, t),
            None => return Err(self.error_at(Some(t), expected)),
        };
        if !number.bytes().all(|b| b.is_ascii_digit()) || number.is_empty() {
            return Err(self.error_at(Some(at), expected));
        }
        match number.parse::<u32>() {
            Ok(0) => Err(self.error_at(Some(at), "the count is 0; say at least x1, or `forever`")),
            Ok(n) => Ok((n, false)),
            Err(_) => {
                Err(self.error_at(Some(at), format!("the count is larger than {}", u32::MAX)))
            }
        }
    }
}

/// `500ms`, `1s`, `2m`, `1h`, `1d`, or several chained: `1m30s`.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let problem = || format!("`{text}` is not a duration; expected e.g. 500ms, 1s, 2m or 1h");
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(problem());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(problem());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| problem())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match rest[..unit_len].to_ascii_lowercase().as_str() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("`{text}` has no unit; say ms, s, m, h or d")),
            unit => return Err(format!("`{unit}` is not a unit; say ms, s, m, h or d")),
        };
        rest = &rest[unit_len..];
        // Saturating keeps an absurd value above the limit, where the caller
        // reports it, instead of wrapping to something small.
        total = total.saturating_add(value.saturating_mul(unit_ms));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> RetryPlan {
        match text.parse::<RetryPlan>() {
            Ok(p) => p,
            Err(e) => panic!("`{text}`: {e}"),
        }
    }

    fn error(text: &str) -> PlanError {
        match text.parse::<RetryPlan>() {
            Ok(p) => panic!("`{text}` parsed as {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_step_and_suffix() {
        let p = plan("[retry, retry_after 1s, backoff 1s x2 max 1m, suspend, give_up] x3");
        assert_eq!(
            p,
            RetryPlan {
                steps: vec![
                    RetryStep::Retry,
                    RetryStep::RetryAfter(1_000),
                    RetryStep::Backoff {
                        base_ms: 1_000,
                        factor: 2.0,
                        max_ms: 60_000
                    },
                    RetryStep::Suspend,
                    RetryStep::GiveUp,
                ],
                count: 3,
                forever: false,
            }
        );
        let p = plan("[backoff 500ms x1.5 max 10m] forever");
        assert!(p.forever);
        assert_eq!(
            p.steps,
            [RetryStep::Backoff {
                base_ms: 500,
                factor: 1.5,
                max_ms: 600_000
            }]
        );
        assert_eq!(plan("[give_up]"), RetryPlan::no_retry());
        assert_eq!(plan("  [ suspend ]  x 2 ").count, 2);
        assert_eq!(plan("[retry]x4").count, 4);
        assert_eq!(
            plan("[retry_after 1h, retry_after 1m30s, retry_after 2d]").steps,
            [
                RetryStep::RetryAfter(3_600_000),
                RetryStep::RetryAfter(90_000),
                RetryStep::RetryAfter(172_800_000)
            ]
        );
        assert_eq!(plan("[backoff 1s x 3 max 1h]").steps.len(), 1);
    }

    #[test]
    fn display_parses_back_to_the_same_plan() {
        let plans = [
            RetryPlan::default_plan(),
            RetryPlan::no_retry(),
            plan("[retry, retry_after 1s, backoff 1s x2 max 1m, suspend, give_up] x3"),
            plan("[backoff 7ms x1.25 max 365d] forever"),
            RetryPlan {
                steps: vec![RetryStep::Backoff {
                    base_ms: 0,
                    factor: 1.000_000_1,
                    max_ms: 0,
                }],
                count: u32::MAX,
                forever: false,
            },
        ];
        for p in plans {
            let text = p.to_string();
            assert_eq!(plan(&text), p, "{text}");
        }
        assert_eq!(
            RetryPlan::default_plan().to_string(),
            "[backoff 1000ms x2 max 60000ms] x3"
        );
    }

    #[test]
    fn errors_name_the_token_and_its_position() {
        let e = error("[retri, give_up]");
        assert_eq!((e.position, e.token.as_str()), (2, "retri"));
        assert_eq!(
            e.to_string(),
            "at position 2 (`retri`): unknown step; expected retry, retry_after, backoff, suspend or give_up"
        );
        let e = error("[retry_after soon]");
        assert_eq!((e.position, e.token.as_str()), (14, "soon"));
        let e = error("[retry_after 5y]");
        assert!(e.to_string().contains("`y` is not a unit"), "{e}");
        let e = error("[retry_after 5]");
        assert!(e.to_string().contains("no unit"), "{e}");
        let e = error("[retry] x0");
        assert_eq!((e.position, e.token.as_str()), (9, "x0"));
        assert!(e.problem.contains("at least x1"), "{e}");
        let e = error("[retry] twice");
        assert!(e.problem.contains("forever"), "{e}");
        let e = error("[retry] forever again");
        assert_eq!(e.token, "again");
        let e = error("[retry");
        assert_eq!((e.position, e.token.as_str()), (7, ""));
        assert!(e.to_string().contains("end of the plan"), "{e}");
        let e = error("retry");
        assert!(e.problem.contains("`[`"), "{e}");
        let e = error("[]");
        assert_eq!((e.position, e.token.as_str()), (2, "]"));
        assert!(e.problem.contains("empty"), "{e}");
        assert!(error("").problem.contains("empty"));
        let e = error("[retry retry]");
        assert_eq!((e.position, e.token.as_str()), (8, "retry"));
        let e = error("[retry,]");
        assert_eq!(e.token, "]");
        // Positions count characters, not bytes.
        let e = error("[é, retry]");
        assert_eq!((e.position, e.token.as_str()), (2, "é"));
    }

    #[test]
    fn validates_like_the_wire_form() {
        let e = error("[backoff 1s x0.5 max 1m]");
        assert_eq!(e.token, "x0.5");
        assert!(e.problem.contains("at least 1"), "{e}");
        let e = error("[backoff 1s xNaN max 1m]");
        assert_eq!(e.token, "xNaN");
        let e = error("[backoff 1m x2 max 1s]");
        assert_eq!((e.position, e.token.as_str()), (20, "1s"));
        assert!(e.problem.contains("shorter"), "{e}");
        let e = error("[backoff 1s max 1m]");
        assert!(e.problem.contains("factor"), "{e}");
        let e = error("[backoff 1s x2]");
        assert!(e.problem.contains("max"), "{e}");
        let e = error("[retry_after 366d]");
        assert!(e.problem.contains("365 days"), "{e}");
        let e = error("[retry_after 99999999999999999999d]");
        assert!(e.problem.contains("not a duration"), "{e}");
        let e = error("[retry_after 9999999999999999d]");
        assert!(e.problem.contains("365 days"), "{e}");
        let e = error("[retry] x4294967296");
        assert!(e.problem.contains("larger"), "{e}");

        let at_limit = vec!["retry"; MAX_RETRY_STEPS].join(", ");
        assert_eq!(plan(&format!("[{at_limit}]")).steps.len(), MAX_RETRY_STEPS);
        let e = error(&format!("[{at_limit}, give_up]"));
        assert_eq!(e.token, "give_up");
        assert!(e.problem.contains("at most 32"), "{e}");
    }

    #[test]
    fn parsed_plans_pass_wire_validation() {
        let p = plan("[retry, retry_after 1s, backoff 1s x2 max 1m, suspend, give_up] forever");
        let wire = lts_proto::v1::RetryPlan::from(p.clone());
        assert_eq!(RetryPlan::try_from(wire), Ok(p));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn step() -> impl Strategy<Value = RetryStep> {
            prop_oneof![
                Just(RetryStep::Retry),
                (0..=MAX_DELAY_MS).prop_map(RetryStep::RetryAfter),
                (0..=MAX_DELAY_MS, 1.0f64..1e6, 0..=MAX_DELAY_MS).prop_map(|(a, factor, b)| {
                    RetryStep::Backoff {
                        base_ms: a.min(b),
                        factor,
                        max_ms: a.max(b),
                    }
                }),
                Just(RetryStep::Suspend),
                Just(RetryStep::GiveUp),
            ]
        }

        proptest! {
            #[test]
            fn any_valid_plan_round_trips(
                steps in proptest::collection::vec(step(), 1..=MAX_RETRY_STEPS),
                count in 1u32..,
                forever in any::<bool>(),
            ) {
                let p = RetryPlan { steps, count: if forever { 0 } else { count }, forever };
                let text = p.to_string();
                prop_assert_eq!(text.parse::<RetryPlan>(), Ok(p), "{}", text);
            }

            #[test]
            fn any_text_parses_or_errors_without_panicking(text in "\\PC{0,60}") {
                if let Err(e) = text.parse::<RetryPlan>() {
                    prop_assert!(e.position >= 1 && e.position <= text.chars().count() + 1);
                }
            }
        }

        /// Text near the grammar: its words, numbers of any size, units,
        /// brackets and commas in any order, with now and then a stray
        /// character.
        fn plan_soup() -> impl Strategy<Value = String> {
            let token = prop_oneof![
                4 => proptest::sample::select(vec![
                    "[", "]", ",", "retry", "retry_after", "backoff", "suspend", "give_up",
                    "forever", "x", "max", "ms", "s", "m", "h", "d", "x2", "1.5", "-1", "0",
                ])
                .prop_map(str::to_string),
                2 => (0u64..1000).prop_map(|n| n.to_string()),
                1 => any::<u64>().prop_map(|n| format!("{n}d")),
                1 => any::<f64>().prop_map(|f| format!("x{f}")),
                1 => "[0-9]{20,40}",
                1 => "\\PC{1,3}",
            ];
            proptest::collection::vec(
                (token, proptest::sample::select(vec!["", " ", "  "])),
                0..40,
            )
            .prop_map(|t| t.into_iter().map(|(a, b)| format!("{a}{b}")).collect())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Near-grammar text parses to a plan that passes wire
            /// validation and prints back to itself, or is refused at a
            /// position inside the text whose token is quoted as written.
            #[test]
            fn near_grammar_text_parses_to_a_valid_plan_or_names_the_token(text in plan_soup()) {
                match text.parse::<RetryPlan>() {
                    Ok(p) => {
                        let wire = lts_proto::v1::RetryPlan::from(p.clone());
                        prop_assert_eq!(RetryPlan::try_from(wire), Ok(p.clone()), "{}", text);
                        prop_assert_eq!(p.to_string().parse::<RetryPlan>(), Ok(p), "{}", text);
                    }
                    Err(e) => {
                        let chars: Vec<char> = text.chars().collect();
                        prop_assert!(e.position >= 1 && e.position <= chars.len() + 1, "{:?}: {}", text, e);
                        prop_assert!(!e.problem.is_empty(), "{:?}", text);
                        let at: String = chars[e.position - 1..].iter().collect();
                        prop_assert!(at.starts_with(e.token.as_str()), "{:?}: {} (text there: {:?})", text, e, at);
                    }
                }
            }
        }
    }
}
