//! The two-station set-up of the failure tests: a home station (content manager and auth)
//! and a station b enrolled with it, both real `vodmesh-node` processes that found each
//! other; a subscriber's console; and a program ingested at the home, published now and
//! replicated whole to b.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::cli::{Ingest, subscriber};
use crate::console::wait_holds_all;
use crate::media::random_file;
use crate::process::{Node, NodeProcess};
use crate::{status, wait};

/// What [`HomeAndReplica::start`] builds.
pub struct HomeAndReplica {
    /// The home station.
    pub home: NodeProcess,
    /// The station holding the replica.
    pub b: NodeProcess,
    /// The console home of subscriber `eve`, logged in.
    pub console: PathBuf,
    /// The program's id.
    pub program: String,
    /// The program's bytes.
    pub bytes: Vec<u8>,
}

/// The program [`HomeAndReplica::start`] ingests.
pub struct Program<'a> {
    /// Its title.
    pub title: &'a str,
    /// Segments of `segment_size` bytes.
    pub segments: u32,
    /// Bytes a segment.
    pub segment_size: usize,
    /// `--bitrate`, when set.
    pub bitrate: Option<u64>,
    /// The seed of its random bytes.
    pub seed: u64,
}

impl HomeAndReplica {
    /// [`HomeAndReplica::start`] with one engine a station, under `dir/home` and `dir/b`, and a
    /// program `title` of `segments` segments of 256 KiB: what most failure tests need.
    pub fn small(dir: &Path, title: &str, segments: u32, seed: u64) -> Result<Self> {
        let program = Program {
            title,
            segments,
            segment_size: 256 * 1024,
            bitrate: None,
            seed,
        };
        Self::start(
            dir,
            Node::new(&dir.join("home")).engines(1).home(),
            Node::new(&dir.join("b")).engines(1),
            program,
        )
    }

    /// Starts `home` and `b` (b enrolled with the home) under `dir`, waits until they found
    /// each other, logs a console in and ingests `program` until b holds all of it.
    pub fn start(dir: &Path, home: Node, b: Node, program: Program<'_>) -> Result<Self> {
        let home = home.start()?;
        let b = b.enrolled_with(&home)?.start()?;
        wait::blocking(
            "the stations to find each other",
            Duration::from_secs(30),
            || Ok(status::directors(&home.addr)?.contains(&b.peer())),
        )?;
        let console = dir.join("console");
        subscriber(&home.addr, &home.key(), &console, "eve")?;
        let source = dir.join(format!("{}.bin", program.seed));
        let size = program.segments as usize * program.segment_size;
        let bytes = random_file(&source, size, program.seed)?;
        let mut ingest = Ingest::new(&home.addr, &home.key(), program.title, &source)
            .publish_now()
            .segment_size(program.segment_size)
            .replicas(1);
        if let Some(bitrate) = program.bitrate {
            ingest = ingest.bitrate(bitrate);
        }
        let id = ingest.run()?;
        tokio::runtime::Runtime::new()?.block_on(wait_holds_all(
            &b.addr,
            id.parse()?,
            program.segments,
            Duration::from_secs(60),
        ))?;
        Ok(Self {
            home,
            b,
            console,
            program: id,
            bytes,
        })
    }
}
