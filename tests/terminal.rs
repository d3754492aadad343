//! What other peers said reaches a terminal as text, not as control sequences: a title with
//! escape sequences (retitle the window, clear the screen) and a newline that would forge a
//! line of output, listed by `vodmesh programs` and `vodmesh-console ls` through real
//! processes, is printed with those characters escaped. (`vodmesh ingest` refuses such a
//! title; another client may send one.)

use anyhow::Result;
use vodmesh_tests::cli::{Ingest, console, vodmesh};
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::Node;

#[test]
fn titles_with_terminal_controls_are_listed_escaped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home"))
        .engines(1)
        .home()
        .start()?;
    let source = dir.path().join("news.bin");
    random_file(&source, 200_000, 5)?;
    let title = "news\u{1b}]0;owned\u{7}\u{1b}[2J\nerror: forged";
    // `vodmesh ingest` refuses such a title (status 2)...
    let refused = Ingest::new(&home.addr, &home.key(), title, &source)
        .publish_now()
        .command()
        .output()?;
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    // ...but another client (or an older release) may send one: it is listed escaped.
    let options = vodmesh_tools::ingest::IngestOptions {
        allow_hosts: Vec::new(),
        node: home.addr.clone(),
        key: home.key(),
        title: title.into(),
        publish_at_ms: Some(0),
        replicas: 0,
        segment_size: vodmesh_tools::ingest::DEFAULT_SEGMENT_SIZE,
        bitrate: vodmesh_tools::ingest::DEFAULT_BITRATE,
        source: source.clone(),
        progress: false,
        ladder: Vec::new(),
        raw: false,
    };
    tokio::runtime::Runtime::new()?.block_on(vodmesh_tools::ingest::run(&options))?;
    let node = home.addr.to_string();

    let listed = vodmesh(&["programs", "--node", &node])?;
    let ls = console(None, &dir.path().join("console"))
        .args(["ls", "--node", &node])
        .output()?;
    assert!(ls.status.success());
    let ls = String::from_utf8(ls.stdout)?;
    for (what, out) in [("vodmesh programs", &listed), ("vodmesh-console ls", &ls)] {
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}'),
            "{what}: {out:?}"
        );
        assert_eq!(
            out.lines().count(),
            1,
            "{what}: one program, one line: {out:?}"
        );
        assert!(
            out.contains("news\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{a}error: forged"),
            "{what}: {out:?}"
        );
    }
    // JSON keeps the title exact (its escaping is JSON's).
    let json: serde_json::Value =
        serde_json::from_str(&vodmesh(&["programs", "--node", &node, "--json"])?)?;
    assert_eq!(json["programs"][0]["title"], title);
    Ok(())
}
