//! Each request to this director handed to the family that answers it ([`super`]'s list),
//! once [`super::admit`] let its sender make it.

use super::*;

impl Director {
    /// Hands a request to its family once its sender may make it ([`admit`]); answers now,
    /// or when the family's work ends. `looked_up`: the sender's record was just looked up.
    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: ResponseChannel<Response>,
        looked_up: bool,
    ) {
        tracing::debug!(%peer, ?request, "director request");
        let now = now_ms();
        let members = self.shared.registry.members();
        let (admits, roles) = (members.admits(&peer, now), members.roles(&peer, now));
        let viewer = Viewer::of(peer, admits && members.is_closed());
        let refused = match admit::admission(admit::needs(&request), admits, roles, looked_up) {
            admit::Admission::Serve => None,
            admit::Admission::LookUp => {
                let registry = &self.shared.registry_handle;
                match self.admitting.park(peer, (request, channel), registry) {
                    None => return,
                    // Looked up lately (or too many wait): decided as looked up.
                    Some((request, channel)) => {
                        return self.on_request(peer, request, channel, true);
                    }
                }
            }
            admit::Admission::NotMember => Some(Error::NotMember),
            admit::Admission::NotCertified => Some(Error::NotCertified),
        };
        if let Some(refused) = refused {
            let kind = request.kind();
            tracing::info!(%peer, request = kind, error = %refused, "director request refused");
            return self.reply((Client::Peer(channel), Response::Error(refused.into())));
        }
        self.dispatch(peer, request, Client::Peer(channel), viewer);
    }

    /// Hands an admitted request of `peer` to its family; answers now, or when the family's
    /// work ends.
    pub(super) fn dispatch(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: Client,
        viewer: Viewer,
    ) {
        let mut ctx = self.shared.ctx(&mut self.swarm.behaviour_mut().kad);
        let reply = match request {
            Request::Station => {
                let counters = self.metrics.counters();
                let signed = (self.station_answer).get(std::time::Instant::now(), || {
                    ctx.me.record(ctx.engines, counters).sign(&ctx.me.key)
                });
                Some((channel, Response::Station(signed)))
            }
            Request::Swarm => {
                let walks = ctx.walks.clone();
                self.tasks.spawn(async move {
                    // Never a stale walk: a pinned console checks the manifest's signer
                    // against these records.
                    let stations = walks.stations_recent().await.map_err(Error::from);
                    let listed = |s: vodmesh_registry::Stations| {
                        Response::Swarm(s.iter().map(|(_, signed)| signed.clone()).collect())
                    };
                    (channel, respond(stations, listed))
                });
                None
            }
            Request::Stations { directors } => {
                let answering = &self.stations_answering;
                stations((answering, &mut self.tasks), &ctx, directors, channel)
            }
            request @ (Request::IngestBegin { .. }
            | Request::IngestCommit { .. }
            | Request::IngestAbort { .. }) => {
                let response = match self.ingest.on_request(&mut ctx, peer, request) {
                    Ok(Ingested::Answer(response)) => response,
                    Ok(Ingested::Committed(committed)) => {
                        let ingest::Committed {
                            info,
                            record,
                            signed,
                        } = *committed;
                        self.publish.announce(&mut ctx, &record, signed);
                        let replicas = (record.replicas, info.size);
                        (self.replicate).distribute(&ctx, record.program, replicas);
                        Response::Program(info)
                    }
                    Err(e) => Response::Error(e.into()),
                };
                Some((channel, response))
            }
            Request::Programs => self.publish.programs(&ctx, (peer, viewer), channel),
            Request::AllPrograms { admin } => {
                let checked = (ctx.me).check_admin_of(
                    &admin,
                    director::PROGRAMS_OP,
                    director::PROGRAMS_SUBJECT,
                );
                match checked {
                    Ok(_) => (self.publish).programs(&ctx, (peer, Viewer::Trusted), channel),
                    Err(e) => Some((channel, Response::Error(e.into()))),
                }
            }
            Request::Manifest { program } => {
                (self.publish).manifest(&ctx, (program, viewer, peer), channel)
            }
            Request::Held => {
                let held = catalog::held(&ctx);
                Some((channel, respond(held, Response::Programs)))
            }
            Request::Locate {
                program,
                index,
                complete: true,
                ..
            } => {
                self.metrics.locate();
                let segment = SegmentId::new(program, index);
                let source = self.miss.source_of(&segment);
                let located =
                    (self.play).locate_complete(&mut ctx, &self.publish, (segment, peer), source);
                if located.is_ok() {
                    self.metrics.hit();
                }
                Some((channel, respond(located, Response::Location)))
            }
            Request::Locate {
                program,
                index,
                avoid,
                busy,
                ahead,
                token,
                ..
            } => {
                self.metrics.locate();
                // A console names a few engines; a megabyte of them would be scanned for each
                // holder and copied for each segment ahead.
                let named = |mut list: Vec<PeerId>| {
                    list.truncate(director::MAX_ENGINES_NAMED);
                    list
                };
                let ask = Locating {
                    console: peer,
                    segment: SegmentId::new(program, index),
                    avoid: named(avoid),
                    busy: named(busy),
                    ahead: ahead.min(director::MAX_AHEAD),
                    token,
                };
                self.locate(ask, channel, true)
            }
            Request::Activity => {
                let mut activity = *ctx.activity;
                activity.active = ctx.engines.streams();
                activity.programs = ctx.locations.program_count().map_or(0, |n| n as u64);
                activity.draining = *self.draining.borrow();
                Some((channel, Response::Activity(activity)))
            }
            Request::Publish { program, admin } => {
                let published = (ctx.me.check_admin(&admin, "publish", &program))
                    .and_then(|_| self.publish.publish(&mut ctx, program));
                Some((channel, respond(published, Response::Program)))
            }
            // A content manager tells of its own records only.
            Request::Published { record } if record.signer() != Some(peer) => {
                Some((channel, Response::Error(Error::BadRecord.into())))
            }
            Request::Published { record } => {
                let learned = self.publish.on_published(&ctx, &record);
                Some((channel, respond(learned, |()| Response::Ok)))
            }
            Request::Replicate {
                program,
                source,
                source_addrs,
                size,
            } => {
                let source = (source, source_addrs);
                // Refused before it is journaled: a station draining for a stop would take it
                // up again only once back in service, while the content manager counted it.
                let started = match *self.draining.borrow() {
                    true => Err(Error::Draining),
                    false => (self.replicate).replicate(&mut ctx, peer, program, source, size),
                };
                Some((channel, respond(started, |()| Response::Ok)))
            }
            Request::LocateCopy {
                program,
                index,
                engines,
            } => {
                let segment = SegmentId::new(program, index);
                (self.replicate).locate_copy(&ctx, peer, (segment, &engines), channel)
            }
            Request::Playable { program } => {
                (self.publish).playable_request(&ctx, (program, peer), channel)
            }
            Request::Drain { drain, admin } => {
                let checked =
                    ctx.me
                        .check_admin_of(&admin, director::DRAIN_OP, director::DRAIN_SUBJECT);
                let drained = checked.map(|admin| {
                    tracing::info!(%admin, drain, "drain asked by an admin");
                    self.draining.send_replace(drain);
                });
                Some((channel, respond(drained, |()| Response::Ok)))
            }
        };
        if let Some(reply) = reply {
            self.reply(reply);
        }
    }
}

/// `Stations` being answered at once, at most: each is a registry look-up per station named.
const MAX_STATIONS_ANSWERING: usize = 32;

/// `Stations`: the live records of `directors` from the registry (each look-up answered by
/// its first valid record, so a hung station holds up none but its own), answered from
/// `tasks`; busy past [`MAX_STATIONS_ANSWERING`] at once (`answering`), refused past
/// [`director::MAX_STATIONS_ASKED`] named.
fn stations(
    (answering, tasks): (&std::sync::Arc<tokio::sync::Semaphore>, &mut Tasks<Reply>),
    ctx: &context::Ctx<'_>,
    mut directors: Vec<PeerId>,
    channel: Client,
) -> Option<Reply> {
    if directors.len() > director::MAX_STATIONS_ASKED {
        let many = format!("Stations of {} directors", directors.len());
        return Some((channel, Response::Error(Error::Unsupported(many).into())));
    }
    let Ok(permit) = answering.clone().try_acquire_owned() else {
        return Some((channel, Response::Error(Error::StationsBusy.into())));
    };
    directors.sort_unstable();
    directors.dedup();
    let registry = ctx.registry.clone();
    tasks.spawn(async move {
        let found = futures::future::join_all(directors.iter().map(|d| registry.get_station(*d)));
        let records = (found.await.into_iter())
            .filter_map(|got| got.ok().flatten())
            .map(|(_, signed)| signed)
            .collect();
        drop(permit);
        (channel, Response::Swarm(records))
    });
    None
}

/// The [`Director`]'s bound on `Stations` answered at once.
pub(super) fn stations_answering() -> std::sync::Arc<tokio::sync::Semaphore> {
    std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_STATIONS_ANSWERING))
}

/// How long one signed record of this station answers `Station` requests.
const STATION_ANSWER_FOR: Duration = Duration::from_millis(250);

/// This station's signed record as `Station` requests are answered (anyone may ask): signed
/// again at most every [`STATION_ANSWER_FOR`], so that a peer asking in a loop costs a copy,
/// not a record built and signed for each request.
#[derive(Default)]
pub(super) struct StationAnswer(Option<(std::time::Instant, Signed)>);

impl StationAnswer {
    /// The record signed less than [`STATION_ANSWER_FOR`] before `now`, else the one `sign`
    /// makes now.
    fn get(&mut self, now: std::time::Instant, sign: impl FnOnce() -> Signed) -> Signed {
        if let Some((at, signed)) = &self.0
            && now.saturating_duration_since(*at) < STATION_ANSWER_FOR
        {
            return signed.clone();
        }
        let signed = sign();
        self.0 = Some((now, signed.clone()));
        signed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(n: u8) -> Signed {
        Signed {
            payload: vec![n].into(),
            public_key: Vec::new().into(),
            signature: Vec::new().into(),
        }
    }

    #[test]
    fn a_station_answer_is_signed_again_only_after_a_quarter_second() {
        let mut answer = StationAnswer::default();
        let t0 = std::time::Instant::now();
        let mut signed_count = 0;
        let mut at = |answer: &mut StationAnswer, after_ms: u64| {
            let now = t0 + Duration::from_millis(after_ms);
            answer.get(now, || {
                signed_count += 1;
                signed(signed_count)
            })
        };
        // A burst within 250 ms: one signature.
        for ms in [0, 1, 100, 249] {
            assert_eq!(at(&mut answer, ms), signed(1), "at {ms} ms");
        }
        // The control: past it, a fresh record.
        assert_eq!(at(&mut answer, 250), signed(2));
        assert_eq!(at(&mut answer, 400), signed(2));
        assert_eq!(at(&mut answer, 600), signed(3));
    }
}
