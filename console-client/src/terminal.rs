//! The console on a terminal: keys that steer playback and a progress line.
//!
//! Keys (read in raw mode, so no Enter is needed): space pauses and resumes, left and right
//! seek 30 s back and forward, `q`, Esc or Ctrl-C quits. The terminal's mode is restored when
//! [`Keys`] is dropped, whatever ends playback.

use std::io::Write;

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::play::{Control, Progress};

/// How far the arrow keys seek.
pub const SEEK_MS: i64 = 30_000;

/// The terminal in raw mode, its keys turned into [`Control`]s.
pub struct Keys {
    _private: (),
}

impl Keys {
    /// Puts the terminal in raw mode and starts reading keys on a thread of their own.
    pub fn start() -> std::io::Result<(Self, mpsc::Receiver<Control>)> {
        crossterm::terminal::enable_raw_mode()?;
        let (tx, rx) = mpsc::channel(16);
        std::thread::Builder::new()
            .name("keys".into())
            .spawn(move || {
                loop {
                    let Ok(event) = event::read() else { return };
                    let Event::Key(key) = event else { continue };
                    let Some(control) = control_of(&key) else {
                        continue;
                    };
                    if tx.blocking_send(control).is_err() || control == Control::Quit {
                        return;
                    }
                }
            })?;
        Ok((Self { _private: () }, rx))
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// What a key press asks for.
pub fn control_of(key: &KeyEvent) -> Option<Control> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    match key.code {
        KeyCode::Char(' ') => Some(Control::TogglePause),
        KeyCode::Left => Some(Control::Seek(-SEEK_MS)),
        KeyCode::Right => Some(Control::Seek(SEEK_MS)),
        KeyCode::Char('q') | KeyCode::Esc => Some(Control::Quit),
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(Control::Quit),
        _ => None,
    }
}

/// `m:ss` (or `h:mm:ss`).
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The last characters of a peer id, enough to tell engines apart on a line.
fn short(peer: &PeerId) -> String {
    let s = peer.to_string();
    s[s.len().saturating_sub(6)..].to_string()
}

/// One line: state, position/duration, buffer, the engine and station serving, handoffs,
/// stalls, waits for busy engines, bytes.
pub fn progress_line(p: &Progress<'_>) -> String {
    let state = if p.paused { "paused" } else { "playing" };
    let serving = match &p.engine {
        Some((engine, station)) => {
            format!("engine ..{} @ station ..{}", short(engine), short(station))
        }
        None => "locating...".into(),
    };
    let rendition = (p.rendition.as_deref()).map_or(String::new(), |r| format!("{r}  "));
    format!(
        "{state:<7} {}/{}  {rendition}buffer {:.1} s  {serving}  {} handoffs  {} stalls  {} waits  {:.1} MiB",
        clock(p.position_ms),
        clock(p.duration_ms),
        p.buffered_ms as f64 / 1000.0,
        p.stats.handoffs,
        p.stats.stalls,
        p.stats.waits,
        p.stats.bytes as f64 / (1024.0 * 1024.0),
    )
}

/// Rewrites the progress line in place on stderr.
pub fn show(p: &Progress<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r{}\x1b[K", progress_line(p));
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::play::PlayStats;

    #[test]
    fn keys_map_to_controls() {
        let key = |code| KeyEvent::new(code, KeyModifiers::NONE);
        assert_eq!(
            control_of(&key(KeyCode::Char(' '))),
            Some(Control::TogglePause)
        );
        assert_eq!(
            control_of(&key(KeyCode::Left)),
            Some(Control::Seek(-30_000))
        );
        assert_eq!(
            control_of(&key(KeyCode::Right)),
            Some(Control::Seek(30_000))
        );
        assert_eq!(control_of(&key(KeyCode::Char('q'))), Some(Control::Quit));
        assert_eq!(
            control_of(&KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Control::Quit)
        );
        assert_eq!(control_of(&key(KeyCode::Char('x'))), None);
    }

    #[test]
    fn the_line_names_position_buffer_engine_and_station() {
        let stats = PlayStats {
            handoffs: 3,
            waits: 2,
            ..Default::default()
        };
        let engine = PeerId::random();
        let station = PeerId::random();
        let line = progress_line(&Progress {
            stats: &stats,
            position_ms: 75_000,
            duration_ms: 3_600_000,
            buffered_ms: 4_000,
            engine: Some((engine, station)),
            paused: true,
            rendition: None,
        });
        assert!(
            line.starts_with("paused  1:15/1:00:00  buffer 4.0 s"),
            "{line}"
        );
        let ladder = progress_line(&Progress {
            stats: &stats,
            position_ms: 0,
            duration_ms: 0,
            buffered_ms: 0,
            engine: None,
            paused: false,
            rendition: Some("720p".into()),
        });
        assert!(
            ladder.starts_with("playing 0:00/0:00  720p  buffer"),
            "{ladder}"
        );
        assert!(line.contains(&short(&engine)) && line.contains(&short(&station)));
        assert!(line.contains("3 handoffs"));
        assert!(line.contains("2 waits"), "{line}");
    }
}
