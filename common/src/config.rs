//! Config from flags, env vars and an optional TOML file.
//!
//! Every binary defines its options with clap derive (each flag with an env
//! var) plus a `--config FILE` flag. A key in the file applies when neither
//! the command line nor the environment set that option, and is checked by
//! the same parser, so a bad value in the file gets the same message naming
//! the flag. Keys are the long flag names, with `-` or `_`.

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgMatches, Parser};

/// Parses the process arguments, then merges the TOML file named by the
/// option with id `config`, if any. Exits with clap's message on error.
pub fn parse_with_file<T: Parser>() -> T {
    match try_parse_with_file::<T, _>(std::env::args_os()) {
        Ok(t) => t,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// What can go wrong reading config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or value is wrong.
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// A value from an env var or the config file is wrong: the message
    /// names where it came from (the variable, or the file and its key) and
    /// the flag it stands for.
    #[error("{origin}: {message}")]
    Value {
        /// The env var, or the file and key, with the flag.
        origin: String,
        /// What is wrong with the value.
        message: String,
    },
    /// The file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// [`parse_with_file`] over given arguments.
pub fn try_parse_with_file<T, I>(args: I) -> Result<T, ConfigError>
where
    T: Parser,
    I: IntoIterator,
    I::Item: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let (matches, _) = merged_matches::<T>(&args)?;
    Ok(T::from_arg_matches(&matches)?)
}

/// One effective setting, as `--check-config` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The long flag, e.g. `--listen`.
    pub flag: String,
    /// Its value as given (joined with `,` when several); a password in a
    /// URI is masked.
    pub value: String,
    /// Where it came from: `command line`, `env VAR`, `config file PATH key
    /// KEY`, or `default`.
    pub source: String,
}

/// Every option's effective value and where it came from, for
/// `--check-config`. Options with no value (unset, no default) are listed
/// as `-` from `default`.
pub fn effective_settings<T, I>(args: I) -> Result<Vec<Setting>, ConfigError>
where
    T: Parser,
    I: IntoIterator,
    I::Item: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let (matches, from_file) = merged_matches::<T>(&args)?;
    let command = T::command();
    let mut settings = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let id = arg.get_id().as_str();
        if matches!(long, "help" | "version" | "check-config") {
            continue;
        }
        let value = match matches.get_raw(id) {
            Some(values) => values
                .map(|v| mask_password(&v.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(","),
            None => "-".to_string(),
        };
        let source = if let Some((path, key)) = from_file
            .iter()
            .find_map(|(l, path, key)| (l == long).then_some((path, key)))
        {
            format!("config file {path} key `{key}`")
        } else {
            match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "command line".to_string(),
                Some(ValueSource::EnvVariable) => format!(
                    "env {}",
                    arg.get_env()
                        .map(|e| e.to_string_lossy())
                        .unwrap_or_default()
                ),
                _ => "default".to_string(),
            }
        };
        settings.push(Setting {
            flag: format!("--{long}"),
            value,
            source,
        });
    }
    Ok(settings)
}

/// [`effective_settings`] as aligned lines: `--flag  value  (source)`.
pub fn settings_text(settings: &[Setting]) -> String {
    let flag_width = settings.iter().map(|s| s.flag.len()).max().unwrap_or(0);
    let value_width = settings.iter().map(|s| s.value.len()).max().unwrap_or(0);
    settings
        .iter()
        .map(|s| {
            format!(
                "  {:flag_width$}  {:value_width$}  ({})\n",
                s.flag, s.value, s.source
            )
        })
        .collect()
}

/// `scheme://user:secret@host` becomes `scheme://user:***@host`.
fn mask_password(value: &str) -> String {
    let Some(scheme_end) = value.find("://") else {
        return value.to_string();
    };
    let rest = &value[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return value.to_string();
    };
    let Some(colon) = rest[..at].find(':') else {
        return value.to_string();
    };
    format!(
        "{}{}:***{}",
        &value[..scheme_end + 3],
        &rest[..colon],
        &rest[at..]
    )
}

/// The arguments' matches with the config file's keys merged in, and which
/// options the file set: (long flag, file path, key).
#[allow(clippy::type_complexity)]
fn merged_matches<T: Parser>(
    args: &[OsString],
) -> Result<(ArgMatches, Vec<(String, String, String)>), ConfigError> {
    let args = args.to_vec();
    let command = T::command();
    let matches = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(|e| value_origin(e, &command, &args, None))?;
    let Some(path) = config_path(&matches) else {
        return Ok((matches, Vec::new()));
    };
    let mut from_file = Vec::new();
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let mut merged = args.clone();
    for (key, value) in table.clone() {
        let long = key.replace('_', "-");
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            return Err(ConfigError::File {
                path,
                message: format!("unknown key `{key}`"),
            });
        };
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
        ) {
            continue;
        }
        from_file.push((long.clone(), path.clone(), key.clone()));
        let takes_value = arg.get_action().takes_values();
        let values = match value {
            toml::Value::Array(items) => items,
            other => vec![other],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Boolean(b) if !takes_value => {
                    if b {
                        merged.push(format!("--{long}").into());
                    }
                    continue;
                }
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError::File {
                        path,
                        message: format!("key `{key}` has a value of an unsupported type: {other}"),
                    })
                }
            };
            merged.push(format!("--{long}={text}").into());
        }
    }
    let matches = command
        .clone()
        .try_get_matches_from(&merged)
        .map_err(|e| value_origin(e, &command, &args, Some((&path, &table))))?;
    Ok((matches, from_file))
}

/// Turns clap's error about a bad value into one that names where the value
/// came from when that was not the command line: the env var, or the config
/// file and its key (clap itself names only the flag). Other errors are
/// kept as they are.
fn value_origin(
    e: clap::Error,
    command: &clap::Command,
    args: &[OsString],
    file: Option<(&str, &toml::Table)>,
) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return e.into();
    }
    let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
        return e.into();
    };
    let Some(long) = flag
        .strip_prefix("--")
        .and_then(|f| f.split([' ', '=']).next())
        .map(str::to_string)
    else {
        return e.into();
    };
    let Some(arg) = find_arg(command, &long) else {
        return e.into();
    };
    let on_command_line = args.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}")
            || a.starts_with(&format!("--{long}="))
            || arg
                .get_short()
                .is_some_and(|c| a.starts_with(&format!("-{c}")) && !a.starts_with("--"))
    });
    if on_command_line {
        return e.into();
    }
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let reason = match (
        std::error::Error::source(&e),
        e.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("it must be one of {}", valid.join(", "))
        }
        _ => "it is not a valid value".to_string(),
    };
    let message = format!("invalid value `{value}`: {reason}");
    let env = arg
        .get_env()
        .filter(|name| std::env::var_os(name).is_some())
        .map(|name| name.to_string_lossy().into_owned());
    if let Some(env) = env {
        return ConfigError::Value {
            origin: format!("env var {env} (--{long})"),
            message,
        };
    }
    if let Some((path, table)) = file {
        if let Some(key) = table.keys().find(|k| k.replace('_', "-") == long) {
            return ConfigError::Value {
                origin: format!("config file {path}, key `{key}` (--{long})"),
                message,
            };
        }
    }
    e.into()
}

/// The option with this long name, in the command or its subcommands.
fn find_arg<'a>(command: &'a clap::Command, long: &str) -> Option<&'a clap::Arg> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_arg(sub, long))
        })
}

fn config_path(matches: &ArgMatches) -> Option<String> {
    matches
        .try_get_one::<std::path::PathBuf>("config")
        .ok()
        .flatten()
        .map(|p| p.display().to_string())
}

/// One row of a README table of flags: the flags it names (`--x`), the env
/// vars (words starting with the binary's prefix), and the default when
/// the cell is one literal value in backticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagRow {
    /// Long flags named in the first cell, in order.
    pub flags: Vec<String>,
    /// Env vars named in the second cell, in order.
    pub envs: Vec<String>,
    /// The default, when the third cell is one value in backticks.
    pub default: Option<String>,
}

/// The rows of the markdown table of `readme` whose header line starts
/// with `header`: the documentation of a binary's flags, checked against
/// its `--help` by [`readme_table_mismatches`].
pub fn readme_flag_rows(
    readme: &str,
    header: &str,
    env_prefix: &str,
) -> Result<Vec<FlagRow>, String> {
    let start = readme
        .find(header)
        .ok_or_else(|| format!("no table starting with `{header}`"))?;
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            // `\|` inside a cell is a literal bar.
            let cells: Vec<String> = row
                .trim_matches('|')
                .replace("\\|", "\u{1}")
                .split(" | ")
                .map(|c| c.replace('\u{1}', "|").trim().to_string())
                .collect();
            if cells.len() < 3 {
                return Err(format!("a row with fewer than three cells: {row}"));
            }
            // Flags named in a note in parentheses are not the row's own.
            let own = cells[0].split(" (").next().unwrap_or_default();
            let flags = ticked(own)
                .iter()
                .filter_map(|t| t.split(' ').next())
                .filter(|t| t.starts_with("--"))
                .map(str::to_string)
                .collect::<Vec<_>>();
            if flags.is_empty() {
                return Err(format!("a row naming no flag: {row}"));
            }
            let envs = cells[1]
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with(env_prefix))
                .map(str::to_string)
                .collect();
            let values = ticked(&cells[2]);
            let default = match values.as_slice() {
                [one] if cells[2] == format!("`{one}`") => Some(one.clone()),
                _ => None,
            };
            Ok(FlagRow {
                flags,
                envs,
                default,
            })
        })
        .collect()
}

/// Whether `line` of a clap `--help` starts the entry of a flag.
fn is_flag_line(line: &str) -> bool {
    line.starts_with("  ") && !line.starts_with("          ") && line.trim_start().starts_with('-')
}

/// The long flag a `--help` entry line documents (`-g, --node-group <G>`).
fn flag_of_line(line: &str) -> Option<&str> {
    line.split([' ', ','])
        .find(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap_or(w))
}

/// The part of a clap `--help` that documents `flag`: from its line to the
/// next flag's.
pub fn help_section(help: &str, flag: &str) -> Option<String> {
    let lines: Vec<&str> = help.lines().collect();
    let start = lines
        .iter()
        .position(|l| is_flag_line(l) && flag_of_line(l) == Some(flag))?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| is_flag_line(l))
        .map_or(lines.len(), |n| start + 1 + n);
    Some(lines[start..end].join("\n"))
}

/// What differs between the README table of flags whose header starts
/// with `header` and `help` (a binary's `--help`): a flag of the table
/// missing from the help, an env var or default the help does not give,
/// and, when the table is meant to be `complete`, a flag of the help
/// (other than `--help` and `--version`) missing from the table. Empty
/// when they agree.
pub fn readme_table_mismatches(
    readme: &str,
    header: &str,
    env_prefix: &str,
    help: &str,
    complete: bool,
) -> Result<Vec<String>, String> {
    let rows = readme_flag_rows(readme, header, env_prefix)?;
    let mut out = Vec::new();
    let mut documented = std::collections::HashSet::new();
    for row in &rows {
        let mut sections = Vec::new();
        for flag in &row.flags {
            documented.insert(flag.clone());
            match help_section(help, flag) {
                Some(s) => sections.push(s),
                None => out.push(format!("{flag} is in the README but not in --help")),
            }
        }
        if sections.len() != row.flags.len() {
            continue;
        }
        if row.envs.is_empty() {
            for (flag, s) in row.flags.iter().zip(&sections) {
                if s.contains("[env: ") {
                    out.push(format!("the README names no env var for {flag}"));
                }
            }
        } else if row.envs.len() == row.flags.len() {
            for ((flag, env), s) in row.flags.iter().zip(&row.envs).zip(&sections) {
                if !s.contains(&format!("[env: {env}")) {
                    out.push(format!("--help does not give {env} for {flag}:\n{s}"));
                }
            }
        } else {
            out.push(format!(
                "the README row of {} names {} env vars for {} flags",
                row.flags.join(", "),
                row.envs.len(),
                row.flags.len()
            ));
        }
        if let (Some(default), Some(s)) = (&row.default, sections.first()) {
            if !s.contains(&format!("[default: {default}]")) {
                out.push(format!(
                    "--help does not give the default {default} for {}:\n{s}",
                    row.flags[0]
                ));
            }
        }
    }
    for line in help.lines().filter(|l| complete && is_flag_line(l)) {
        if let Some(flag) = flag_of_line(line) {
            if !matches!(flag, "--help" | "--version") && !documented.contains(flag) {
                out.push(format!("{flag} is in --help but not in the README"));
            }
        }
    }
    Ok(out)
}

/// A size in bytes for a flag: a number, optionally followed by KiB, MiB
/// or GiB (or K, M, G); zero is refused.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err(format!(
            "`{}` is out of range; say a size above zero",
            text.trim()
        )),
        n => Ok(n),
    }
}

/// A size in bytes for a flag where zero means "off": a number, optionally
/// followed by KiB, MiB, GiB or TiB (or K, M, G, T).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" | "k" => 10,
        "mib" | "m" => 20,
        "gib" | "g" => 30,
        "tib" | "t" => 40,
        other => return Err(format!("unknown unit `{other}`; say KiB, MiB, GiB or TiB")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 256MiB"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_readme_table_is_checked_both_ways_against_help() {
        let help = "\
Options:
  -g, --group <G>   The group [env: X_GROUP=] [default: a]
      --slots <N>   Slots [env: X_SLOTS=] [default: 4]
      --quiet       Say less
  -h, --help        Print help
";
        let readme = "\
| flag | env | default |
|---|---|---|
| `--group G` (see `--slots`) | `X_GROUP` | `a` |
| `--slots N` | `X_SLOTS` | `5` |
| `--gone` | `X_GONE` | off |
";
        let rows = super::readme_flag_rows(readme, "| flag |", "X_").expect("rows");
        assert_eq!(rows[0].flags, vec!["--group"]);
        assert_eq!(rows[0].envs, vec!["X_GROUP"]);
        assert_eq!(rows[0].default.as_deref(), Some("a"));
        let found =
            super::readme_table_mismatches(readme, "| flag |", "X_", help, true).expect("a table");
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("default 5 for --slots"), "{found:?}");
        assert!(found[1].contains("--gone is in the README"), "{found:?}");
        assert!(found[2].contains("--quiet is in --help"), "{found:?}");
        let partial =
            super::readme_table_mismatches(readme, "| flag |", "X_", help, false).expect("a table");
        assert_eq!(partial.len(), 2, "{partial:?}");
    }

    #[test]
    fn sizes_take_binary_units_and_refuse_zero_and_nonsense() {
        assert_eq!(super::parse_bytes("512"), Ok(512));
        assert_eq!(super::parse_bytes("4KiB"), Ok(4096));
        assert_eq!(super::parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(super::parse_bytes("1 GiB"), Ok(1 << 30));
        assert!(super::parse_bytes("0").is_err());
        assert!(super::parse_bytes("12 parsecs").is_err());
        assert!(super::parse_bytes("lots").is_err());
    }

    use super::*;
    use std::io::Write;

    #[derive(Parser, Debug)]
    struct Opts {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 4)]
        slots: u32,
        #[arg(long, default_value = "a")]
        group: String,
        #[arg(long)]
        verbose: bool,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn file_values_apply_unless_flags_say_otherwise() {
        let f = file("slots = 9\ngroup = \"b\"\nverbose = true\n");
        let path = f.path().display().to_string();
        let o: Opts = try_parse_with_file(["x", "--config", &path]).expect("parse");
        assert_eq!((o.slots, o.group.as_str(), o.verbose), (9, "b", true));
        let o: Opts = try_parse_with_file(["x", "--config", &path, "--slots", "2"]).expect("parse");
        assert_eq!(o.slots, 2);
    }

    #[test]
    fn settings_say_where_each_value_came_from() {
        let f = file("slots = 9\n");
        let path = f.path().display().to_string();
        let settings =
            effective_settings::<Opts, _>(["x", "--config", &path, "--group", "g"]).expect("parse");
        let find = |flag: &str| {
            settings
                .iter()
                .find(|s| s.flag == flag)
                .unwrap_or_else(|| panic!("{flag} in {settings:?}"))
                .clone()
        };
        assert_eq!(find("--slots").value, "9");
        assert_eq!(
            find("--slots").source,
            format!("config file {path} key `slots`")
        );
        assert_eq!(find("--group").source, "command line");
        assert_eq!(find("--verbose").source, "default");
        assert_eq!(
            mask_password("mongodb://u:secret@h:27017/db"),
            "mongodb://u:***@h:27017/db"
        );
        assert_eq!(mask_password("mongodb://h:27017/"), "mongodb://h:27017/");
    }

    #[test]
    fn bad_file_values_name_the_flag() {
        let f = file("slots = \"many\"\n");
        let path = f.path().display().to_string();
        let e = try_parse_with_file::<Opts, _>(["x", "--config", &path]).unwrap_err();
        assert!(e.to_string().contains("--slots"), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("config file {path}, key `slots` (--slots)")),
            "{e}"
        );
        assert!(e.to_string().contains("invalid value `many`"), "{e}");
        let f = file("colour = 1\n");
        let path = f.path().display().to_string();
        let e = try_parse_with_file::<Opts, _>(["x", "--config", &path]).unwrap_err();
        assert!(e.to_string().contains("unknown key `colour`"), "{e}");
    }
}
