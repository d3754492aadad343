//! Liveness and readiness for orchestrators and load balancers, served beside `/metrics`:
//! `GET /healthz` answers 200 while the process serves HTTP at all; `GET /readyz` answers 200
//! only when the station is worth sending consoles to, else 503 with the first reason it is
//! not ([`NotReady`], one line of text).
//!
//! A station is ready when it is not draining, has joined the swarm (its registry's routing
//! table holds a connected director, or it is a lone first station: no `--bootstrap`), every
//! engine it was started with is up (in-process engines, and every `--engine-peer` attached),
//! and, when its engines need engine tokens (an enrolled station, the auth station), every
//! engine holds one. The decision is [`readiness`], a plain function of those facts.

/// What readiness is decided from, as the station sees it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The station is draining (SIGTERM, `vodmesh station drain`): it takes no new streams.
    pub draining: bool,
    /// It was given `--bootstrap` stations: it must join through one of them.
    pub bootstrap: bool,
    /// Directors in its registry's routing table that it is connected to now.
    pub registry_peers: u64,
    /// Engines it was started with (in-process, plus `--engine-peer` slots).
    pub engines: usize,
    /// Of those, engines that have reported and are up.
    pub engines_up: usize,
    /// Engines that must hold an engine token (0 when the station copies nothing).
    pub tokens_needed: usize,
    /// Of those, engines that hold one.
    pub tokens_held: usize,
}

/// Why a station is not ready; the `Display` text is the body of the 503.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// It is draining: its consoles are being sent to other stations.
    #[error("draining: new streams go to other stations")]
    Draining,
    /// It was given `--bootstrap` and is connected to no other director yet.
    #[error("not joined: connected to no other director of the swarm yet (--bootstrap)")]
    NotJoined,
    /// Some engines are down or not attached.
    #[error("engines: {up} of {expected} up")]
    EnginesDown {
        /// Engines up.
        up: usize,
        /// Engines the station was started with.
        expected: usize,
    },
    /// Some engines have no engine token yet (enrollment in progress, auth server away).
    #[error("engine tokens: {held} of {needed} engines hold one")]
    NoTokens {
        /// Engines holding a token.
        held: usize,
        /// Engines that need one.
        needed: usize,
    },
}

/// Whether a station with `facts` is ready; the first reason it is not, in the order of
/// [`NotReady`]'s variants (a draining station is not ready whatever else holds).
pub fn readiness(facts: &Facts) -> Result<(), NotReady> {
    if facts.draining {
        return Err(NotReady::Draining);
    }
    if facts.bootstrap && facts.registry_peers == 0 {
        return Err(NotReady::NotJoined);
    }
    if facts.engines_up < facts.engines || facts.engines == 0 {
        return Err(NotReady::EnginesDown {
            up: facts.engines_up,
            expected: facts.engines,
        });
    }
    if facts.tokens_held < facts.tokens_needed {
        return Err(NotReady::NoTokens {
            held: facts.tokens_held,
            needed: facts.tokens_needed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Facts {
        Facts {
            bootstrap: true,
            registry_peers: 1,
            engines: 2,
            engines_up: 2,
            tokens_needed: 2,
            tokens_held: 2,
            ..Facts::default()
        }
    }

    #[test]
    fn a_joined_station_with_its_engines_and_tokens_is_ready() {
        assert_eq!(readiness(&ready()), Ok(()));
    }

    #[test]
    fn a_lone_first_station_is_ready_without_peers() {
        let lone = Facts {
            bootstrap: false,
            registry_peers: 0,
            ..ready()
        };
        assert_eq!(readiness(&lone), Ok(()));
    }

    #[test]
    fn each_missing_fact_is_named() {
        let cases = [
            (
                Facts {
                    registry_peers: 0,
                    ..ready()
                },
                NotReady::NotJoined,
            ),
            (
                Facts {
                    engines_up: 1,
                    ..ready()
                },
                NotReady::EnginesDown { up: 1, expected: 2 },
            ),
            (
                Facts {
                    tokens_held: 0,
                    ..ready()
                },
                NotReady::NoTokens { held: 0, needed: 2 },
            ),
            (
                Facts {
                    draining: true,
                    ..ready()
                },
                NotReady::Draining,
            ),
        ];
        for (facts, why) in cases {
            assert_eq!(readiness(&facts), Err(why), "{facts:?}");
        }
    }

    #[test]
    fn draining_goes_before_every_other_reason() {
        let facts = Facts {
            draining: true,
            registry_peers: 0,
            engines_up: 0,
            tokens_held: 0,
            ..ready()
        };
        assert_eq!(readiness(&facts), Err(NotReady::Draining));
    }

    #[test]
    fn a_station_without_engines_is_never_ready() {
        let none = Facts {
            engines: 0,
            engines_up: 0,
            ..ready()
        };
        assert!(readiness(&none).is_err());
    }
}
