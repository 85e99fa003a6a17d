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
    let command = T::command();
    let matches = command.clone().try_get_matches_from(&args)?;
    let Some(path) = config_path(&matches) else {
        return Ok(T::from_arg_matches(&matches)?);
    };
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
    for (key, value) in table {
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
    let matches = command.try_get_matches_from(&merged)?;
    Ok(T::from_arg_matches(&matches)?)
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
    fn bad_file_values_name_the_flag() {
        let f = file("slots = \"many\"\n");
        let path = f.path().display().to_string();
        let e = try_parse_with_file::<Opts, _>(["x", "--config", &path]).unwrap_err();
        assert!(e.to_string().contains("--slots"), "{e}");
        let f = file("colour = 1\n");
        let path = f.path().display().to_string();
        let e = try_parse_with_file::<Opts, _>(["x", "--config", &path]).unwrap_err();
        assert!(e.to_string().contains("unknown key `colour`"), "{e}");
    }
}
