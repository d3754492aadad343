//! Running vodmesh like a service (issue 23), through the real binaries: `vodmesh-node
//! --config FILE`, `VODMESH_*` variables and their precedence (`--print-config`), a station
//! started from a configuration file alone that joins and serves, an unknown key refused by
//! name; completions and man pages of the three binaries; `--version` with the commit;
//! `--log-format json`; and the packaging files (Dockerfile, compose.yaml, the systemd units,
//! the example configuration), every `vodmesh-node` flag they use checked against the real
//! clap definition.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::CommandFactory;
use serde_json::Value;
use vodmesh_node::cli::{Args, parse};
use vodmesh_tests::cli::{Play, bin, command_in, refusal_of, run, subscriber};
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::{Node, NodeProcess};
use vodmesh_tests::{require, status, wait};
use yaml_rust2::{Yaml, YamlLoader};

/// The workspace, where the packaging files are.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `vodmesh-node ARGS` with exactly the environment `env` (no VODMESH_* of the caller's).
fn node_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = command_in(None, "vodmesh-node");
    command.env_clear().args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// The lines of `--print-config` as key -> (value, origin comment).
fn printed(text: &str) -> BTreeMap<String, (String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, rest) = l.split_once(" = ")?;
            let (value, origin) = rest.split_once("  # ")?;
            Some((key.to_string(), (value.to_string(), origin.to_string())))
        })
        .collect()
}

#[test]
fn flags_beat_variables_beat_the_file_beats_defaults() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "data = \"/srv/from-file\"\nmax_streams = 8\nengines = 2\nregion = \"file\"\n\
         listen = [\"/ip4/127.0.0.1/tcp/4001\", \"/ip4/127.0.0.1/udp/4001/quic-v1\"]\n\
         home = true\n",
    )?;
    let config = file.to_string_lossy().into_owned();
    let out = run(&mut node_command(
        &["--config", &config, "--engines", "3", "--print-config"],
        &[
            ("VODMESH_MAX_STREAMS", "9"),
            ("VODMESH_REGION", "env"),
            ("VODMESH_BOOTSTRAP", ""),
            (
                "VODMESH_TRUST",
                &format!(
                    "{},{}",
                    vodmesh_proto::token::Issuer::generate().public(),
                    vodmesh_proto::token::Issuer::generate().public()
                ),
            ),
            // The console's directory, which must not make a home station of this one.
            ("VODMESH_HOME", "/home/someone/.local/share/vodmesh"),
            ("VODMESH_HOME_STATION", "false"),
        ],
    ))?;
    let keys = printed(&out);
    let value = |k: &str| keys.get(k).map(|(v, o)| (v.as_str(), o.as_str()));
    assert_eq!(value("engines"), Some(("3", "--engines")), "{out}");
    assert_eq!(
        value("max-streams"),
        Some(("9", "VODMESH_MAX_STREAMS")),
        "{out}"
    );
    assert_eq!(
        value("region"),
        Some(("\"env\"", "VODMESH_REGION")),
        "{out}"
    );
    assert_eq!(
        value("data"),
        Some(("\"/srv/from-file\"", config.as_str())),
        "{out}"
    );
    assert_eq!(
        value("listen"),
        Some((
            "[\"/ip4/127.0.0.1/tcp/4001\", \"/ip4/127.0.0.1/udp/4001/quic-v1\"]",
            config.as_str()
        )),
        "{out}"
    );
    assert_eq!(
        value("home"),
        Some(("false", "VODMESH_HOME_STATION")),
        "{out}"
    );
    let trust = value("trust").context("no trust")?;
    assert_eq!(trust.1, "VODMESH_TRUST", "{out}");
    assert_eq!(trust.0.matches("ed25519:").count(), 2, "{out}");
    assert_eq!(value("capacity"), Some(("0", "default")), "{out}");

    // What it printed is a configuration file that gives the same configuration.
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &out)?;
    let path = again.to_string_lossy().into_owned();
    let out2 = run(&mut node_command(
        &["--config", &path, "--print-config"],
        &[],
    ))?;
    let values = |keys: BTreeMap<String, (String, String)>| -> BTreeMap<String, String> {
        keys.into_iter().map(|(k, (v, _))| (k, v)).collect()
    };
    assert_eq!(values(printed(&out2)), values(keys));

    // The file alone, through VODMESH_CONFIG.
    let out3 = run(&mut node_command(
        &["--print-config"],
        &[("VODMESH_CONFIG", &config)],
    ))?;
    assert_eq!(
        printed(&out3).get("max-streams").map(|(v, _)| v.as_str()),
        Some("8")
    );
    Ok(())
}

#[test]
fn an_unknown_key_or_a_wrong_value_is_refused_by_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "data = \"/tmp/x\"\nmax-stream = 64\n")?;
    let config = file.to_string_lossy().into_owned();
    let out = node_command(&["--config", &config], &[]).output()?;
    let line = refusal_of(&out)?;
    assert!(line.contains("unknown key `max-stream`"), "{line}");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a configuration error is status 2"
    );

    std::fs::write(&file, "data = \"/tmp/x\"\nengines = [1, 2]\n")?;
    let line = refusal_of(&node_command(&["--config", &config], &[]).output()?)?;
    assert!(
        line.contains("engines in ") && line.contains("not an array"),
        "{line}"
    );

    let out = node_command(&["--data", "/tmp/x"], &[("VODMESH_MAX_STREAMS", "lots")]).output()?;
    let line = refusal_of(&out)?;
    assert!(
        line.starts_with("error: VODMESH_MAX_STREAMS: invalid value 'lots'"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(2));

    let missing = dir.path().join("missing.toml");
    let out = node_command(&["--config", &missing.to_string_lossy()], &[]).output()?;
    let line = refusal_of(&out)?;
    assert!(line.contains("missing.toml"), "{line}");

    // clap's own usage errors are status 2 as well.
    let out = node_command(&["--data", "/tmp/x", "--no-such-flag"], &[]).output()?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

#[test]
fn a_station_from_a_config_file_alone_joins_and_serves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home"))
        .engines(2)
        .home()
        .ttl(10)
        .start()?;
    let data = dir.path().join("member");
    std::fs::create_dir_all(&data)?;
    // Enrolled (issue 19): a member of the home's swarm.
    let token = vodmesh_tests::cli::enroll_new_station(None, &home.addr, &home.key(), &data, &[])?;
    let file = dir.path().join("member.toml");
    let config = format!(
        "# a member station, configured by this file alone\n\
         data = {data:?}\n\
         listen = [\"/ip4/127.0.0.1/tcp/0\"]\n\
         bootstrap = [\"{bootstrap}\"]\n\
         trust = [\"{issuer}\"]\n\
         enroll = {token:?}\n\
         engines = 3\n\
         capacity = 123456789\n\
         max_streams = 5\n\
         record-ttl = 10\n\
         region = \"from-the-file\"\n",
        data = data.to_string_lossy(),
        token = token.to_string_lossy(),
        bootstrap = home.addr,
        issuer = home.issuer()?,
    );
    std::fs::write(&file, config)?;
    let member = Node::from_config(&data, &file).start()?;

    // Listed from the home station, with what the file set.
    let what = "the member station in the home's listing, with its three engines";
    wait::blocking(what, Duration::from_secs(30), || {
        Ok(status::directors(&home.addr)?.contains(&member.peer())
            && status::station(&member.addr)?["engines"]
                .as_array()
                .is_some_and(|e| e.len() == 3))
    })?;
    let station = status::station(&member.addr)?;
    assert_eq!(station["region"], "from-the-file", "{station}");
    for engine in station["engines"].as_array().context("no engines")? {
        assert_eq!(engine["capacity"], 123_456_789, "{engine}");
        assert_eq!(engine["max_streams"], 5, "{engine}");
    }

    // It serves: a program ingested at the home plays through it, byte for byte.
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "ann")?;
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 6 * 1024 * 1024, 23)?;
    vodmesh_tests::cli::Ingest::new(&home.addr, &home.key(), "configured", &source)
        .segment_size(1024 * 1024)
        .publish_now()
        .run()?;
    let played = Play::new(&console, &member.addr, "configured").run()?;
    assert!(
        played.bytes == bytes,
        "bytes played differ from bytes ingested"
    );
    assert!(member.terminate()?, "SIGTERM ends a station with status 0");
    Ok(())
}

#[test]
fn logs_as_json_lines() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let station = Node::new(&dir.path().join("a"))
        .args(&["--log-format", "json"])
        .start()?;
    station.wait_log("director listening", Duration::from_secs(10))?;
    let log = station.log();
    let mut listening = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON line: {line}"))?;
        ensure!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
        listening |= event["fields"]["message"] == "director listening";
    }
    assert!(listening, "{log}");
    // A first station alone is normal: kad's "no known peers" is not a warning of its.
    assert!(!log.contains("Failed to trigger bootstrap"), "{log}");
    Ok(())
}

/// The three binaries, with a subcommand or flag each must mention in its completions.
const BINARIES: [(&str, &str); 3] = [
    ("vodmesh-node", "max-streams"),
    ("vodmesh", "ingest"),
    ("vodmesh-console", "play"),
];

#[test]
fn completions_and_man_pages_for_each_binary() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (name, known) in BINARIES {
        for shell in ["bash", "zsh", "fish"] {
            let script = run(Command::new(bin(name)).args(["completions", shell]))?;
            assert!(
                script.len() > 500 && script.contains(known),
                "{name} completions {shell}: {script}"
            );
        }
        let page = run(Command::new(bin(name)).arg("man"))?;
        assert!(
            page.contains(".TH") && page.contains(name),
            "{name} man: {page}"
        );
        // Rendered by the man page formatter, when there is one.
        if require::installed("groff") {
            let path = dir.path().join(format!("{name}.1"));
            std::fs::write(&path, &page)?;
            let text = run(Command::new("groff").args(["-man", "-Tutf8"]).arg(&path))?;
            assert!(
                text.contains("SYNOPSIS") || text.contains("S\u{8}SY"),
                "{text}"
            );
        }
        let pages = dir.path().join(name);
        run(Command::new(bin(name)).arg("man").arg("--dir").arg(&pages))?;
        assert!(pages.join(format!("{name}.1")).exists(), "{name}.1");
        assert!(pages.join(format!("{name}-completions.1")).exists());
    }
    Ok(())
}

#[test]
fn version_names_the_commit() -> Result<()> {
    // `git ARGS` in the workspace: its output, `None` outside a checkout (or without git).
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let checkout = git(&["rev-parse", "--short", "HEAD"]).is_some();
    for (name, _) in BINARIES {
        let version = run(Command::new(bin(name)).arg("--version"))?;
        let prefix = format!("{name} {} (commit ", env!("CARGO_PKG_VERSION"));
        let commit = (version.trim())
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(')'))
            .with_context(|| format!("{name} --version: {version}"))?;
        if checkout {
            // The commit the binary was built at (HEAD, or an earlier one when it was built
            // before the last commit): a commit of this repository.
            assert!(commit.len() >= 7, "{version}");
            let kind = git(&["cat-file", "-t", commit]);
            assert_eq!(kind.as_deref(), Some("commit"), "{version}");
        } else {
            assert_eq!(commit, "unknown", "{version}");
        }
    }
    Ok(())
}

/// A `vodmesh-node` command line of a packaging file, parsed by the real definition with
/// `env` as its environment; the configuration file it names is read from `config` instead
/// (the example, or one the test wrote).
fn parses(what: &str, args: &[String], env: &[(String, String)], config: &Path) -> Result<Args> {
    let mut argv: Vec<OsString> = vec!["vodmesh-node".into()];
    for arg in args {
        argv.push(match arg.split_once('=') {
            Some(("--config", _)) => format!("--config={}", config.display()).into(),
            _ if arg == "/etc/vodmesh/vodmesh-node.toml" => config.into(),
            _ => arg.into(),
        });
    }
    let env: BTreeMap<String, String> = env.iter().cloned().collect();
    match parse(argv, &|k| env.get(k).cloned()) {
        Ok(parsed) => Ok(parsed.args),
        Err(e) => bail!("{what}: {e}"),
    }
}

/// The `[Section]` -> key -> values of a systemd unit.
fn unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            (sections.entry(current.clone()).or_default())
                .entry(key.trim().to_string())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    sections
}

/// `key` of a compose service, or of what it merges in (`<<: *station`, which yaml-rust2
/// leaves unresolved).
fn field<'a>(service: &'a Yaml, key: &str) -> &'a Yaml {
    match &service[key] {
        Yaml::BadValue => &service["<<"][key],
        value => value,
    }
}

fn yaml_strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn packaging_files_use_real_flags() -> Result<()> {
    let root = workspace();
    let example = root.join("packaging/vodmesh-node.toml");
    let dir = tempfile::tempdir()?;

    // The example configuration loads, and says what it should.
    let args = parses(
        "the example configuration",
        &["--config".into(), example.to_string_lossy().into()],
        &[],
        &example,
    )?;
    assert_eq!(args.data.as_deref(), Some(Path::new("/var/lib/vodmesh")));
    assert_eq!(args.engines, 2);
    assert_eq!(args.max_streams, 64);

    // The Dockerfile: multi-stage, a user without privileges, a volume, ports, and the
    // VODMESH_* variables of its runtime image real flags with valid values.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))?;
    let instructions: Vec<(&str, &str)> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let of = |word: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(w, _)| *w == word)
            .map(|(_, rest)| *rest)
            .collect()
    };
    assert!(of("FROM").len() >= 2, "multi-stage");
    assert!(of("FROM").iter().any(|f| f.contains("slim")));
    assert_eq!(of("USER"), ["vodmesh"]);
    assert!(dockerfile.contains("useradd --system --uid 10001"));
    assert!(of("VOLUME").iter().any(|v| v.contains("/var/lib/vodmesh")));
    assert!(
        of("EXPOSE")
            .iter()
            .any(|e| e.contains("4001/tcp") && e.contains("4001/udp"))
    );
    assert_eq!(of("ENTRYPOINT"), ["[\"vodmesh-node\"]"]);
    let env_block = dockerfile
        .rsplit("\nENV ")
        .next()
        .and_then(|rest| rest.split("\nVOLUME").next())
        .context("no ENV in the runtime image")?;
    let image_env: Vec<(String, String)> = env_block
        .split_whitespace()
        .filter(|w| *w != "\\")
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(
        image_env.iter().any(|(k, _)| k == "VODMESH_DATA"),
        "{image_env:?}"
    );
    let args = parses("the image's environment", &[], &image_env, &example)?;
    assert_eq!(args.listen.len(), 2);
    assert!(args.metrics.is_some());
    assert!(std::fs::read_to_string(root.join(".dockerignore"))?.contains("target"));

    // compose.yaml: three stations, the first the home, content manager and auth server, the
    // others joining it with what `join` writes; every flag real.
    let compose = std::fs::read_to_string(root.join("compose.yaml"))?;
    let docs = YamlLoader::load_from_str(&compose)?;
    let services = &docs.first().context("empty compose.yaml")?["services"];
    let env: Vec<(String, String)> = field(&services["a"], "environment")
        .as_hash()
        .context("no environment")?
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
        .collect();
    let a = parses(
        "compose a",
        &yaml_strings(field(&services["a"], "command")),
        &env,
        &example,
    )?;
    assert!(a.home && a.content_manager && a.auth);
    assert!(!a.announce.is_empty() && a.listen.iter().all(|l| !l.to_string().ends_with("/0")));
    // What the join script writes, with the values it would: each key must be a flag.
    let script = field(&services["join"], "command")[0]
        .as_str()
        .context("no join script")?;
    let written: Vec<&str> = script
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .collect();
    assert_eq!(written, ["bootstrap", "trust", "enroll"], "{script}");
    let join = dir.path().join("join.toml");
    std::fs::write(
        &join,
        format!(
            "bootstrap = [\"/ip4/172.29.81.11/tcp/4001/p2p/{}\"]\ntrust = [\"{}\"]\nenroll = \"/x\"\n",
            libp2p::PeerId::random(),
            vodmesh_proto::token::Issuer::generate().public()
        ),
    )?;
    for name in ["b", "c"] {
        let args = parses(
            name,
            &yaml_strings(field(&services[name], "command")),
            &env,
            &join,
        )?;
        assert_eq!(args.bootstrap.len(), 1, "{name} joins through a");
        assert_eq!(args.trust.len(), 1, "{name} trusts a's issuer");
        assert!(args.enroll.is_some(), "{name} is enrolled");
        assert!(!(args.home || args.auth || args.content_manager));
    }
    // The tools the join script runs take the flags it gives them.
    for (sub, flags) in [
        ("keygen", &["--out"][..]),
        ("enroll", &["--node", "--key", "--station", "--out"][..]),
    ] {
        assert!(script.contains(&format!("vodmesh {sub}")), "{script}");
        let help = run(Command::new(bin("vodmesh")).args([sub, "--help"]))?;
        for flag in flags {
            assert!(help.contains(flag), "vodmesh {sub} has no {flag}");
        }
    }

    // The systemd units: hardened, and their command lines real.
    let station = std::fs::read_to_string(root.join("packaging/systemd/vodmesh-node.service"))?;
    let engine = std::fs::read_to_string(root.join("packaging/systemd/vodmesh-node@.service"))?;
    for (name, text) in [
        ("vodmesh-node.service", &station),
        ("vodmesh-node@.service", &engine),
    ] {
        let u = unit(text);
        let service = u
            .get("Service")
            .with_context(|| format!("{name}: no [Service]"))?;
        let one = |k: &str| service.get(k).and_then(|v| v.first()).map(String::as_str);
        assert_eq!(one("DynamicUser"), Some("yes"), "{name}");
        assert_eq!(one("ProtectSystem"), Some("strict"), "{name}");
        assert_eq!(one("NoNewPrivileges"), Some("yes"), "{name}");
        assert!(one("StateDirectory").is_some(), "{name}");
        assert!(
            u.get("Install").is_some_and(|i| i.contains_key("WantedBy")),
            "{name}"
        );
    }
    let u = unit(&station);
    let exec = u["Service"]["ExecStart"].join(" ");
    let env: Vec<(String, String)> = u["Service"]["Environment"]
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let argv: Vec<String> = exec.split_whitespace().skip(1).map(String::from).collect();
    let args = parses("vodmesh-node.service", &argv, &env, &example)?;
    assert_eq!(args.data.as_deref(), Some(Path::new("/var/lib/vodmesh")));
    let u = unit(&engine);
    let exec = u["Service"]["ExecStart"].join(" ");
    let director = format!("/ip4/192.0.2.2/tcp/4001/p2p/{}", libp2p::PeerId::random());
    let issuer = vodmesh_proto::token::Issuer::generate()
        .public()
        .to_string();
    let argv: Vec<String> = exec
        .split_whitespace()
        .filter(|w| *w != "$ARGS")
        .map(|w| {
            w.replace("${DIRECTOR}", &director)
                .replace("${TRUST}", &issuer)
                .replace("%i", "e1")
        })
        .collect();
    let matches = Args::command().try_get_matches_from(&argv)?;
    assert_eq!(matches.subcommand_name(), Some("engine"), "{exec}");

    // systemd's own check, where it is installed, of the units as they would be installed
    // (with the binary built here).
    if require::installed("systemd-analyze") {
        let units = dir.path().join("units");
        std::fs::create_dir_all(&units)?;
        let exe = bin("vodmesh-node").to_string_lossy().into_owned();
        for (name, text) in [
            ("vodmesh-node.service", &station),
            ("vodmesh-node@.service", &engine),
        ] {
            std::fs::write(
                units.join(name),
                text.replace("/usr/local/bin/vodmesh-node", &exe),
            )?;
        }
        let out: Output = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(units.join("vodmesh-node.service"))
            .arg(units.join("vodmesh-node@.service"))
            .output()?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify: {said}"
        );
    }

    // The image itself, where docker works: a daemon, and the base images can be had.
    let docker = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let bases = ["rust:1.95-slim-trixie", "debian:trixie-slim"];
    assert!(
        dockerfile.contains("ARG RUST_VERSION=1.95") && dockerfile.contains("ARG DEBIAN=trixie"),
        "the Dockerfile's base images are {bases:?}"
    );
    if docker(&["info"]) && bases.iter().all(|b| docker(&["pull", b])) {
        let built = Command::new("docker")
            .args(["build", "-t", "vodmesh-ops-test", "."])
            .current_dir(&root)
            .output()?;
        assert!(
            built.status.success(),
            "docker build: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let version =
            run(Command::new("docker").args(["run", "--rm", "vodmesh-ops-test", "--version"]))?;
        assert!(version.starts_with("vodmesh-node "), "{version}");
    } else {
        println!(
            "docker (a daemon, the base images) is not working here: the Dockerfile was checked, not built"
        );
    }
    Ok(())
}

#[test]
fn the_compose_join_script_enrolls_and_configures_the_stations() -> Result<()> {
    // compose.yaml's `join` script, run as it is against a station `a` on loopback: its data
    // directory where compose has /var/lib/vodmesh, its address for the fixed one.
    let compose = std::fs::read_to_string(workspace().join("compose.yaml"))?;
    let docs = YamlLoader::load_from_str(&compose)?;
    let services = &docs.first().context("empty compose.yaml")?["services"];
    let script = field(&services["join"], "command")[0]
        .as_str()
        .context("no join script")?;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("vodmesh");
    let a = Node::new(&root.join("a"))
        .engines(1)
        .home()
        .ttl(10)
        .start()?;
    let tcp = a
        .addr
        .iter()
        .take_while(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect::<libp2p::Multiaddr>();
    let script = script
        .replace("$$", "$")
        .replace("/var/lib/vodmesh", &root.to_string_lossy())
        .replace("/ip4/172.29.81.11/tcp/4001", &tcp.to_string());
    let bins = bin("vodmesh")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new("sh")
        .args(["-euc", &script])
        .env("PATH", &path))?;

    // b starts from what it wrote (and compose's flags but the fixed addresses), joins, and
    // its engines receive engine tokens: it was enrolled.
    let b_data = root.join("b");
    let join = b_data.join("join.toml");
    let written = std::fs::read_to_string(&join)?;
    assert!(written.contains(&a.addr.to_string()), "{written}");
    assert!(written.contains(&a.issuer()?), "{written}");
    let b = Node::from_config(&b_data, &join)
        .args(&["--data", &b_data.to_string_lossy(), "--engines", "2"])
        .args(&["--listen", "/ip4/127.0.0.1/tcp/0", "--record-ttl", "10"])
        .start()?;
    b.wait_engine_token(0)?;
    b.wait_engine_token(1)?;
    wait::blocking("b in a's listing", Duration::from_secs(30), || {
        Ok(status::directors(&a.addr)?.contains(&b.peer()))
    })?;
    assert!(root.join("c/join.toml").exists() && root.join("c/enroll.token").exists());
    // Run again (a restart of the compose project), it leaves what it made alone.
    run(Command::new("sh")
        .args(["-euc", &script])
        .env("PATH", &path))?;
    assert_eq!(std::fs::read_to_string(&join)?, written);
    Ok(())
}

/// The exit statuses `--help` documents: 2 for a bad command line, 1 for a refusal, 0 for a
/// station and a gateway stopped by SIGTERM.
#[test]
fn exit_statuses_are_as_documented() -> Result<()> {
    for (name, _) in BINARIES {
        let help = run(Command::new(bin(name)).arg("--help"))?;
        assert!(
            help.contains("Exit status: 0 done"),
            "{name} --help: {help}"
        );
        let out = Command::new(bin(name)).arg("--no-such-flag").output()?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: a bad command line is 2"
        );
    }
    // Values out of range that clap cannot see: 2 as well, one line.
    let out = Command::new(bin("vodmesh-node"))
        .args(["--data", "/nonexistent/x", "--engines", "0"])
        .output()?;
    assert!(refusal_of(&out)?.contains("at least one engine"));
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin("vodmesh-console"))
        .args([
            "play",
            "--node",
            "/ip4/127.0.0.1/tcp/1",
            "--buffer",
            "700",
            "--out",
            "-",
            "x",
        ])
        .output()?;
    assert!(refusal_of(&out)?.contains("--buffer"));
    assert_eq!(out.status.code(), Some(2));
    // A refused run is 1, with one line.
    let dir = tempfile::tempdir()?;
    let out = Command::new(bin("vodmesh-console"))
        .env("VODMESH_HOME", dir.path())
        .args([
            "ls",
            "--node",
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWK2ijo8AdwrjK6i8J6TZKLVUJ4yKxpoDUeH6TDjy7vjoQ",
        ])
        .output()?;
    refusal_of(&out)?;
    assert_eq!(out.status.code(), Some(1));
    let station = NodeProcess::start(&dir.path().join("a"), &[])?;
    // The gateway, run as a service, is stopped by SIGTERM too.
    let mut serve = Command::new(bin("vodmesh-console"))
        .env("VODMESH_HOME", dir.path().join("console"))
        .args([
            "serve",
            "--node",
            &station.addr.to_string(),
            "--http",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = serve.stdout.take().context("no stdout")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first = lines.next().context("serve printed nothing")??;
    assert!(first.starts_with("serving http://"), "{first}");
    // Read on, so that its stdout stays open.
    std::thread::spawn(move || lines.for_each(drop));
    let gateway = vodmesh_tests::process::Child::from(serve);
    assert!(
        gateway.terminate()?,
        "vodmesh-console serve: SIGTERM, status 0"
    );
    assert!(station.terminate()?, "vodmesh-node: SIGTERM, status 0");
    Ok(())
}
