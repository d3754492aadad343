//! vodmesh-console: a subscriber's client of the swarm. The caller side of the control
//! protocols (director, auth, key and token files) is `vodmesh-client`'s; this crate plays.
//!
//! - [`play`]: playing a program with handoff from engine to engine, verified: the tokio
//!   driver of `playback`, the pure state machine of its decisions (fetch window, clock,
//!   pause, seek, stalls, handoffs).
//! - `session`: an open program (its verified manifest, the directors to ask) and the
//!   swarm's program list; `directors`: which director to ask, passing over a station that
//!   went down.
//! - `fetch`: one segment, located, streamed (one stream per engine at a time, busy engines
//!   waited out) and verified, each 16 KiB chunk group as it arrives when the engine holds
//!   the segment complete (verified mode, `vodmesh_proto::verified`); `retry` holds its decisions after a failed attempt, `hedge`
//!   when a silent fetch is raced by a second one as its play time nears.
//! - [`output`]: `--out -` into a pipe, written from the playing task without blocking.
//! - [`remember`]: the swarm a console keeps after login, asked when `--node` is left out.
//! - [`pin`]: the issuer a console pins at its first login; it logs in with no other.
//! - [`terminal`]: keys that steer playback and the progress line.
//! - [`serve`]: `vodmesh-console serve`, an HLS gateway for standard players and browsers.

pub mod abr;
mod directors;
mod fetch;
mod hedge;
pub mod output;
pub mod pin;
pub mod play;
mod playback;
pub mod remember;
mod retry;
pub mod serve;
mod session;
pub mod terminal;
