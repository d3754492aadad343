//! A command line's flags as keys of a TOML file and as environment variables, for any
//! `clap::Command`: the keys are the command's own long flags (no second list to keep in
//! step), and a flag's value comes from the command line, else the environment, else the file,
//! else the flag's default.
//!
//! How: the environment's and the file's values become the arguments' defaults
//! (`Arg::default_values`) before clap parses the command line, so clap's
//! own rule (a value given on the command line replaces the default) gives the precedence.
//! Every value is checked by the flag's own parser before it is used, so a wrong one is
//! refused in one line that says where it came from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::builder::Resettable;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Flags that are not configuration: they say what to do with it, or are clap's own.
const NOT_KEYS: [&str; 4] = ["config", "print-config", "help", "version"];

/// Why a configuration was refused. The `Display` text is the one line a user sees.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{0}")]
    Read(#[from] vodmesh_client::files::FileError),
    /// The file is not TOML.
    #[error("{}, line {line}: {message}; the file must be TOML (key = value)", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line of the error, from 1.
        line: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// A key that is not a flag of the command.
    #[error(
        "unknown key `{key}` in {}: every key is a flag of `{command} --help` without its \
         dashes (e.g. max-streams = 64)",
        .path.display()
    )]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The file.
        path: PathBuf,
        /// The command's name.
        command: String,
    },
    /// The same key twice (`max-streams` and `max_streams`).
    #[error("key `{key}` is given twice in {}", .path.display())]
    Twice {
        /// The key, as the flag is named.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// A value of the wrong kind (an array for a flag given once, a table).
    #[error("{origin}: {expected}")]
    Shape {
        /// Where the value came from (`max-streams in FILE`).
        origin: String,
        /// What the key takes.
        expected: String,
    },
    /// A value the flag's own parser refused.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where the value came from (`max-streams in FILE`, `VODMESH_MAX_STREAMS`).
        origin: String,
        /// What the parser said.
        message: String,
    },
}

/// Where a flag's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The command line.
    Flag,
    /// An environment variable, by name.
    Env(String),
    /// The configuration file.
    File(PathBuf),
    /// The flag's own default (or unset).
    Default,
}

/// How the keys of a command map to environment variables: the variable of a long flag name.
pub type EnvName = fn(&str) -> String;

/// A command whose defaults are the environment's and the file's values, and where each
/// came from.
#[derive(Debug)]
pub struct Layered {
    /// The command to parse the command line with.
    pub command: Command,
    /// The configuration file read, if any.
    pub file: Option<PathBuf>,
    /// Where each value that is not the flag's own default came from (by argument id), before
    /// the command line is parsed.
    origins: BTreeMap<String, Origin>,
    env_name: EnvName,
}

/// Layers `cmd` for `argv` (with the binary's name first): the file of `--config FILE` (or of
/// the variable `env_name("config")`), then the environment (`env` looks a variable up), as
/// defaults. A command line whose first argument is a subcommand is left as it is: the file
/// and the environment configure the command itself, not its subcommands.
pub fn layer(
    cmd: Command,
    argv: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
    env_name: EnvName,
) -> Result<Layered, Error> {
    let mut layered = Layered {
        command: cmd,
        file: None,
        origins: BTreeMap::new(),
        env_name,
    };
    let first = argv.get(1).and_then(|a| a.to_str());
    if first.is_some_and(|a| layered.command.find_subcommand(a).is_some()) {
        return Ok(layered);
    }
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    layered.file = config_path(argv).or_else(|| env(&env_name("config")).map(PathBuf::from));
    if let Some(path) = layered.file.clone() {
        for (id, vals) in read_file(&layered.command, &path)? {
            layered
                .origins
                .insert(id.clone(), Origin::File(path.clone()));
            values.insert(id, vals);
        }
    }
    for arg in keys(&layered.command) {
        let Some(long) = arg.get_long() else { continue };
        let name = env_name(long);
        let Some(value) = env(&name).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let vals = from_env(arg, &name, &value)?;
        let id = arg.get_id().to_string();
        layered.origins.insert(id.clone(), Origin::Env(name));
        values.insert(id, vals);
    }
    // In place (`mut_args`, not `mut_arg`, which moves the flag last in --help).
    // clap's `required` asks for the flag itself; a value from a layer answers it.
    layered.command = layered
        .command
        .mut_args(|a| match values.get(a.get_id().as_str()) {
            Some(vals) => a.default_values(vals.clone()).required(false),
            None => a,
        });
    Ok(layered)
}

impl Layered {
    /// Where the value of argument `id` came from, once the command line is parsed.
    pub fn origin(&self, matches: &ArgMatches, id: &str) -> Origin {
        if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            return Origin::Flag;
        }
        self.origins.get(id).cloned().unwrap_or(Origin::Default)
    }

    /// The effective configuration as TOML, every key with where its value came from; keys
    /// without a value are listed as comments. What `--print-config` prints; a file it wrote
    /// is a valid `--config`.
    pub fn print(&self, matches: &ArgMatches) -> String {
        let name = self.command.get_name();
        let mut out = format!(
            "# The effective configuration of {name}: command line > environment > file > \
             default.\n# Usable as {name} --config FILE.\n"
        );
        for arg in keys(&self.command) {
            let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
                continue;
            };
            let raw: Vec<String> = matches
                .get_raw(id)
                .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let from = match self.origin(matches, id) {
                Origin::Flag => format!("--{long}"),
                Origin::Env(var) => var,
                Origin::File(path) => path.display().to_string(),
                Origin::Default => "default".into(),
            };
            let repeatable = is_repeatable(arg);
            if raw.is_empty() && !repeatable {
                out.push_str(&format!("# {long} = (not set)\n"));
                continue;
            }
            let value = match repeatable {
                true => toml::Value::Array(raw.iter().map(|v| typed(arg, v)).collect()),
                false => raw
                    .first()
                    .map(|v| typed(arg, v))
                    .unwrap_or(toml::Value::Array(vec![])),
            };
            out.push_str(&format!("{long} = {value}  # {from}\n"));
        }
        out.push_str(&format!(
            "# Environment: {} and so on (repeatable flags comma-separated).\n",
            (self.env_name)("max-streams")
        ));
        out
    }
}

/// The arguments that are keys: every long flag but [`NOT_KEYS`].
fn keys(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| !NOT_KEYS.contains(&l)))
}

/// `--config FILE` or `--config=FILE` on the command line.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

fn is_repeatable(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

/// The file's values, by argument id, each checked by its flag's parser.
fn read_file(cmd: &Command, path: &Path) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let bytes = vodmesh_client::files::read_small(path, "configuration file", MAX_CONFIG_FILE)?;
    let text = String::from_utf8_lossy(&bytes);
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Parse {
        path: path.to_path_buf(),
        line: e.span().map_or(1, |s| {
            // Counted in bytes: a span is a byte offset, whatever the characters before it.
            let before = &text.as_bytes()[..s.start.min(text.len())];
            before.iter().filter(|b| **b == b'\n').count() + 1
        }),
        message: e.message().trim().to_string(),
    })?;
    let mut values = BTreeMap::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = keys(cmd)
            .find(|a| a.get_long() == Some(long.as_str()))
            .ok_or_else(|| Error::UnknownKey {
                key: key.clone(),
                path: path.to_path_buf(),
                command: cmd.get_name().to_string(),
            })?;
        let origin = format!("{key} in {}", path.display());
        let vals = from_toml(arg, &origin, value)?;
        let id = arg.get_id().to_string();
        if values.insert(id, vals).is_some() {
            return Err(Error::Twice {
                key: long,
                path: path.to_path_buf(),
            });
        }
    }
    Ok(values)
}

/// A TOML value of the key of `arg` as the flag's values.
fn from_toml(arg: &Arg, origin: &str, value: &toml::Value) -> Result<Vec<String>, Error> {
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    let shape = |expected: &str| Error::Shape {
        origin: origin.to_string(),
        expected: expected.to_string(),
    };
    let vals = match (value, is_repeatable(arg), is_switch(arg)) {
        (toml::Value::Boolean(b), _, true) => vec![b.to_string()],
        (_, _, true) => return Err(shape("takes true or false")),
        (toml::Value::Array(items), true, _) => items
            .iter()
            .map(|v| scalar(v).ok_or_else(|| shape("takes an array of strings or numbers")))
            .collect::<Result<_, _>>()?,
        (toml::Value::Array(_), false, _) => {
            return Err(shape(
                "takes one value, not an array (the flag is not repeatable)",
            ));
        }
        (v, _, _) => vec![scalar(v).ok_or_else(|| shape("takes a string or a number"))?],
    };
    check(arg, origin, &vals)?;
    Ok(vals)
}

/// An environment variable's value as the flag's values: comma-separated for a repeatable
/// flag, `true`/`false` (or 1/0, yes/no, on/off) for a switch.
fn from_env(arg: &Arg, name: &str, value: &str) -> Result<Vec<String>, Error> {
    let vals: Vec<String> = if is_repeatable(arg) {
        value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect()
    } else if is_switch(arg) {
        let on = match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(Error::Shape {
                    origin: format!("{name}={value}"),
                    expected: "takes true or false".into(),
                });
            }
        };
        vec![on.to_string()]
    } else {
        vec![value.trim().to_string()]
    };
    check(arg, name, &vals)?;
    Ok(vals)
}

/// Runs the flag's own parser on each value (a command of that one flag), so a wrong value
/// is refused where it came from rather than as an error about the command line.
fn check(arg: &Arg, origin: &str, vals: &[String]) -> Result<(), Error> {
    if is_switch(arg) {
        return Ok(());
    }
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    // Alone in a command of its own: no rule that names another flag.
    let probe = (arg.clone())
        .required(false)
        .global(false)
        .requires(Resettable::Reset)
        .conflicts_with(Resettable::Reset)
        .overrides_with(Resettable::Reset);
    for val in vals {
        let result = Command::new("check")
            .no_binary_name(true)
            .arg(probe.clone())
            .try_get_matches_from([format!("--{long}={val}")]);
        if let Err(e) = result {
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or_default();
            return Err(Error::Invalid {
                origin: origin.to_string(),
                message: line.trim_start_matches("error: ").to_string(),
            });
        }
    }
    Ok(())
}

/// A raw value as TOML of the flag's type: a number for a number flag, a boolean for a
/// switch, else a string.
fn typed(arg: &Arg, raw: &str) -> toml::Value {
    use std::any::TypeId;
    let parser = arg.get_value_parser().type_id();
    let integer = [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
    ];
    if is_switch(arg) || parser == TypeId::of::<bool>() {
        if let Ok(b) = raw.parse() {
            return toml::Value::Boolean(b);
        }
    } else if integer.iter().any(|t| parser == *t) {
        if let Ok(i) = raw.parse() {
            return toml::Value::Integer(i);
        }
    } else if parser == TypeId::of::<f64>()
        && let Ok(f) = raw.parse()
    {
        return toml::Value::Float(f);
    }
    toml::Value::String(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> Command {
        Command::new("demo")
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("data").long("data").required(true))
            .arg(
                Arg::new("max_streams")
                    .long("max-streams")
                    .value_parser(clap::value_parser!(u32))
                    .default_value("64"),
            )
            .arg(Arg::new("listen").long("listen").action(ArgAction::Append))
            .arg(Arg::new("scrub").long("scrub").action(ArgAction::SetTrue))
            .arg(Arg::new("region").long("region"))
    }

    fn env_name(long: &str) -> String {
        format!("DEMO_{}", long.to_uppercase().replace('-', "_"))
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("demo")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Layers and parses `args` with `file` as the configuration and `vars` as the
    /// environment; the layered command and its matches.
    fn run(
        file: &str,
        vars: &[(&str, &str)],
        args: &[&str],
    ) -> Result<(Layered, ArgMatches), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::Shape {
            origin: "tempdir".into(),
            expected: e.to_string(),
        })?;
        let path = dir.path().join("demo.toml");
        std::fs::write(&path, file).map_err(|e| Error::Shape {
            origin: "write".into(),
            expected: e.to_string(),
        })?;
        let path = path.to_string_lossy().into_owned();
        let mut full = vec!["--config", path.as_str()];
        full.extend_from_slice(args);
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let layered = layer(cmd(), &argv(&full), &|k| vars.get(k).cloned(), env_name)?;
        let matches = layered
            .command
            .clone()
            .try_get_matches_from(argv(&full))
            .map_err(|e| Error::Invalid {
                origin: "parse".into(),
                message: e.to_string(),
            })?;
        Ok((layered, matches))
    }

    fn streams(m: &ArgMatches) -> Option<u32> {
        m.get_one::<u32>("max_streams").copied()
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() -> Result<(), Error> {
        let (_, m) = run("data = \"/d\"", &[], &[])?;
        assert_eq!(streams(&m), Some(64));
        let (l, m) = run("data = \"/d\"\nmax-streams = 8", &[], &[])?;
        assert_eq!(streams(&m), Some(8));
        assert!(matches!(l.origin(&m, "max_streams"), Origin::File(_)));
        let (l, m) = run(
            "data = \"/d\"\nmax_streams = 8",
            &[("DEMO_MAX_STREAMS", "9")],
            &[],
        )?;
        assert_eq!(streams(&m), Some(9));
        assert_eq!(
            l.origin(&m, "max_streams"),
            Origin::Env("DEMO_MAX_STREAMS".into())
        );
        let (l, m) = run(
            "data = \"/d\"\nmax-streams = 8",
            &[("DEMO_MAX_STREAMS", "9")],
            &["--max-streams", "10"],
        )?;
        assert_eq!(streams(&m), Some(10));
        assert_eq!(l.origin(&m, "max_streams"), Origin::Flag);
        Ok(())
    }

    #[test]
    fn arrays_and_switches() -> Result<(), Error> {
        let file = "data = \"/d\"\nlisten = [\"a\", \"b\"]\nscrub = true";
        let (_, m) = run(file, &[], &[])?;
        let listen: Vec<&String> = m.get_many("listen").into_iter().flatten().collect();
        assert_eq!(listen, ["a", "b"]);
        assert!(m.get_flag("scrub"));
        // The environment replaces the file's list, comma-separated; a switch turns off.
        let (_, m) = run(file, &[("DEMO_LISTEN", "c, d"), ("DEMO_SCRUB", "off")], &[])?;
        let listen: Vec<&String> = m.get_many("listen").into_iter().flatten().collect();
        assert_eq!(listen, ["c", "d"]);
        assert!(!m.get_flag("scrub"));
        // The command line replaces both.
        let (_, m) = run(file, &[("DEMO_LISTEN", "c")], &["--listen", "e"])?;
        let listen: Vec<&String> = m.get_many("listen").into_iter().flatten().collect();
        assert_eq!(listen, ["e"]);
        Ok(())
    }

    #[test]
    fn refusals_name_the_key_and_where() {
        let unknown = run("data = \"/d\"\nmax-stream = 3", &[], &[]);
        assert!(
            matches!(&unknown, Err(Error::UnknownKey { key, .. }) if key == "max-stream"),
            "{unknown:?}"
        );
        let line = unknown.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            line.contains("unknown key `max-stream`") && !line.contains('\n'),
            "{line}"
        );
        assert!(matches!(
            run("max-streams = 1\nmax_streams = 2", &[], &[]),
            Err(Error::Twice { .. })
        ));
        assert!(matches!(
            run("region = [\"x\"]", &[], &[]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            run("scrub = \"yes\"", &[], &[]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            run("config = \"x\"", &[], &[]),
            Err(Error::UnknownKey { .. })
        ));
        let bad = run("max-streams = \"many\"", &[], &[]);
        assert!(
            matches!(&bad, Err(Error::Invalid { origin, .. }) if origin.starts_with("max-streams in ")),
            "{bad:?}"
        );
        let bad = run("", &[("DEMO_MAX_STREAMS", "-1")], &[]);
        assert!(
            matches!(&bad, Err(Error::Invalid { origin, .. }) if origin == "DEMO_MAX_STREAMS"),
            "{bad:?}"
        );
        let line = run("a = = 1", &[], &[]).err().map(|e| e.to_string());
        assert!(
            line.as_deref().is_some_and(|l| l.contains("line 1")),
            "{line:?}"
        );
        let line = run("region = \"é\"\nb = = 1", &[], &[])
            .err()
            .map(|e| e.to_string());
        assert!(
            line.as_deref().is_some_and(|l| l.contains("line 2")),
            "{line:?}"
        );
    }

    #[test]
    fn print_is_toml_that_loads_back() -> Result<(), Error> {
        let (l, m) = run(
            "data = \"/d\"\nlisten = [\"a\"]",
            &[("DEMO_SCRUB", "true")],
            &["--max-streams", "7"],
        )?;
        let printed = l.print(&m);
        assert!(
            printed.contains("max-streams = 7  # --max-streams"),
            "{printed}"
        );
        assert!(printed.contains("scrub = true  # DEMO_SCRUB"), "{printed}");
        assert!(printed.contains("# region = (not set)"), "{printed}");
        let (_, again) = run(&printed, &[], &[])?;
        assert_eq!(streams(&again), Some(7));
        assert!(again.get_flag("scrub"));
        Ok(())
    }

    #[test]
    fn subcommands_are_left_alone() -> Result<(), Error> {
        let cmd = cmd().subcommand(Command::new("engine"));
        let l = layer(cmd, &argv(&["engine"]), &|_| Some("5".into()), env_name)?;
        assert!(l.origins.is_empty() && l.file.is_none());
        Ok(())
    }
}
