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

#[cfg(test)]
mod tests {
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
