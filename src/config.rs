//! The configuration file: a TOML file with one section per command, keys
//! spelled as the command's long flags (`[serve]` with `grpc =
//! "127.0.0.1:9721"`, `data = "/var/lib/lazix"`). Read from `--config FILE`
//! (anywhere on the command line), else `/etc/lazix/lazix.toml` when it
//! exists. A command with subcommands has a section per subcommand:
//! `[store.up]` (or `[store]` holding `[up]`) for `lazix store up`.
//!
//! Precedence: flags > environment > file > defaults. The file's settings
//! become command-line flags placed before the user's own, for the
//! settings the user neither gave as a flag nor set in the environment
//! (where the flag reads one), so clap parses and checks everything in one
//! place. A key that is not a long flag of its command is an error naming
//! it. `--print-config` prints the merged settings of the command and
//! exits.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{ArgAction, ArgMatches, Command};

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_FILE: &str = "/etc/lazix/lazix.toml";

/// `args` (the process's, program name first) with the configuration
/// file's settings for the chosen command added, `--config FILE` taken
/// out; and whether `--print-config` was asked (also taken out).
pub fn merged_args(cli: &Command, args: Vec<OsString>) -> Result<(Vec<OsString>, bool)> {
    let mut rest = Vec::with_capacity(args.len());
    let mut file: Option<PathBuf> = None;
    let mut print = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            let f = it.next().context("--config needs a file")?;
            file = Some(PathBuf::from(f));
        } else if let Some(f) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            file = Some(PathBuf::from(f));
        } else if a == "--print-config" {
            print = true;
        } else {
            rest.push(a);
        }
    }
    let file = match file {
        Some(f) => Some(f),
        None if Path::new(DEFAULT_FILE).exists() => Some(PathBuf::from(DEFAULT_FILE)),
        None => None,
    };
    let Some(file) = file else {
        return Ok((rest, print));
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading the configuration file {}", file.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("parsing the configuration file {}", file.display()))?;
    // The command chosen: the first argument naming a subcommand, and
    // the subcommands of it named right after (`store up` → [store.up]).
    let Some(mut pos) = rest
        .iter()
        .position(|a| a.to_str().is_some_and(|s| cli.find_subcommand(s).is_some()))
    else {
        return Ok((rest, print));
    };
    for section in table.keys() {
        if cli.find_subcommand(section).is_none() {
            bail!("{}: unknown section [{section}]", file.display());
        }
    }
    let mut sub = cli
        .find_subcommand(rest[pos].to_str().expect("checked above"))
        .expect("found above");
    let mut path = vec![sub.get_name().to_string()];
    while let Some(next) = rest
        .get(pos + 1)
        .and_then(|a| a.to_str())
        .and_then(|a| sub.find_subcommand(a))
    {
        sub = next;
        pos += 1;
        path.push(sub.get_name().to_string());
    }
    let name = path.join(".");
    let mut section = &table;
    for (depth, part) in path.iter().enumerate() {
        let Some(value) = section.get(part) else {
            return Ok((rest, print));
        };
        let shown = path[..=depth].join(".");
        section = value
            .as_table()
            .with_context(|| format!("{}: [{shown}] is not a table", file.display()))?;
    }
    let given: Vec<String> = rest[pos + 1..]
        .iter()
        .filter_map(|a| a.to_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let mut added: Vec<OsString> = Vec::new();
    for (key, value) in section {
        let Some(arg) = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
        else {
            bail!("{}: [{name}]: unknown key {key:?}", file.display());
        };
        if given.iter().any(|g| g == key) {
            continue; // a flag wins
        }
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue; // the environment wins
        }
        let flag = format!("--{key}");
        let as_text = |v: &toml::Value| -> Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!(
                    "{}: [{name}] {key}: unsupported value {other}",
                    file.display()
                ),
            })
        };
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => added.push(flag.into()),
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => {}
            (ArgAction::SetTrue, _) => {
                bail!("{}: [{name}] {key}: expected true or false", file.display())
            }
            (_, toml::Value::Array(values)) => {
                for v in values {
                    added.push(flag.clone().into());
                    added.push(as_text(v)?.into());
                }
            }
            (_, v) => {
                added.push(flag.into());
                added.push(as_text(v)?.into());
            }
        }
    }
    // The file's settings right after the command name, the user's after
    // them.
    let tail = rest.split_off(pos + 1);
    rest.extend(added);
    rest.extend(tail);
    Ok((rest, print))
}

/// The merged settings of the command `matches` chose, as the TOML section
/// that would set them.
pub fn print(cli: &Command, matches: &ArgMatches) -> String {
    let (mut sub, mut sub_matches) = (cli, matches);
    let mut path = Vec::new();
    while let Some((name, m)) = sub_matches.subcommand() {
        let Some(next) = sub.find_subcommand(name) else {
            return String::new();
        };
        path.push(name.to_string());
        (sub, sub_matches) = (next, m);
    }
    if path.is_empty() {
        return String::new();
    }
    let name = path.join(".");
    let mut out = format!("[{name}]\n");
    for arg in sub.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if matches!(arg.get_action(), ArgAction::Help | ArgAction::Version) {
            continue;
        }
        let Some(raw) = sub_matches.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = raw
            .map(|v| toml::Value::String(v.to_string_lossy().into_owned()).to_string())
            .collect();
        let source = sub_matches
            .value_source(id)
            .map(|s| format!("{s:?}").to_lowercase())
            .unwrap_or_default();
        let value = match (arg.get_action(), values.as_slice()) {
            (ArgAction::SetTrue | ArgAction::SetFalse, [one]) => one.trim_matches('"').to_string(),
            (ArgAction::Append, _) => format!("[{}]", values.join(", ")),
            (_, [one]) => one.clone(),
            _ => format!("[{}]", values.join(", ")),
        };
        out.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    out
}
