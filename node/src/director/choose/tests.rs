use super::*;
use vodmesh_proto::ProgramId;
use vodmesh_proto::station::{DiskUsage, Roles};

use LocationState::{Complete, Filling};

fn engine(streams: u32, max_streams: u32, up: bool) -> EngineInfo {
    EngineInfo {
        peer_id: PeerId::random(),
        addrs: vec![],
        streams,
        max_streams,
        used: 0,
        capacity: 0,
        up,
        disks: vec![],
        http: None,
        https: false,
        bulk: None,
    }
}

fn views(engines: &[EngineInfo]) -> Vec<EngineView<'_>> {
    engines
        .iter()
        .enumerate()
        .map(|(i, e)| (EngineId(i), e))
        .collect()
}

fn held(engines: &[EngineInfo], at: &[(usize, LocationState)]) -> Vec<Location> {
    at.iter()
        .map(|(i, state)| Location {
            engine: engines[*i].peer_id,
            state: *state,
            load: 0,
        })
        .collect()
}

fn serving(engine: usize, filling: bool) -> Choice {
    Choice::Engine {
        engine: EngineId(engine),
        filling,
    }
}

#[test]
fn the_least_loaded_complete_holder_that_is_up_serves() {
    let engines = [engine(3, 8, true), engine(1, 8, true), engine(0, 8, false)];
    let v = views(&engines);
    let holders = held(&engines, &[(0, Complete), (1, Complete), (2, Complete)]);
    assert_eq!(
        stream_engine(&v, &holders, &Asker::default()),
        serving(1, false)
    );
    // A complete copy goes before an idler filling one.
    let holders = held(&engines, &[(0, Complete), (1, Filling)]);
    assert_eq!(
        stream_engine(&v, &holders, &Asker::default()),
        serving(0, false)
    );
    // A filling copy serves when it is the only one.
    let holders = held(&engines, &[(1, Filling)]);
    assert_eq!(
        stream_engine(&v, &holders, &Asker::default()),
        serving(1, true)
    );
}

#[test]
fn full_or_busy_holders_are_busy_and_avoided_or_down_ones_are_not_holders() {
    let engines = [engine(2, 2, true), engine(1, 2, true), engine(0, 2, false)];
    let v = views(&engines);
    let holders = held(&engines, &[(0, Complete), (1, Complete)]);
    let busy = [engines[1].peer_id];
    let asker = Asker {
        busy: &busy,
        ..Default::default()
    };
    assert_eq!(stream_engine(&v, &holders, &asker), Choice::Busy);
    let avoid = [engines[1].peer_id];
    let asker = Asker {
        avoid: &avoid,
        ..Default::default()
    };
    assert_eq!(stream_engine(&v, &holders, &asker), Choice::Busy);
    let avoid = [engines[0].peer_id, engines[1].peer_id];
    let asker = Asker {
        avoid: &avoid,
        ..Default::default()
    };
    assert_eq!(stream_engine(&v, &holders, &asker), Choice::NotHere);
    let holders = held(&engines, &[(2, Complete)]);
    assert_eq!(
        stream_engine(&v, &holders, &Asker::default()),
        Choice::NotHere
    );
}

#[test]
fn a_busy_answer_the_table_does_not_bear_out_is_passed_over() {
    // Engine 0 idle, engine 1 at 6 of 8, engine 2 at 5 of 8: all hold the segment.
    let engines = [engine(0, 8, true), engine(6, 8, true), engine(5, 8, true)];
    let v = views(&engines);
    let holders = held(&engines, &[(0, Complete), (1, Complete), (2, Complete)]);
    let all: Vec<PeerId> = engines.iter().map(|e| e.peer_id).collect();
    let asker = Asker {
        busy: &all,
        ..Default::default()
    };
    // A console naming every holder busy, the idle one too, is sent to the idle one (and so
    // starts no overload copy); of the others, only 6 of 8 is within a quarter of its limit.
    assert_eq!(stream_engine(&v, &holders, &asker), serving(0, false));
    let asker = Asker {
        busy: &all[1..],
        ..Default::default()
    };
    assert_eq!(stream_engine(&v, &holders, &asker), serving(0, false));
    // Control: holders near their limit are taken at the console's word: every holder busy.
    let holders = held(&engines, &[(1, Complete)]);
    assert_eq!(stream_engine(&v, &holders, &asker), Choice::Busy);
    // And a console near its share of an engine's streams is, whatever the engine's load.
    let own = HashMap::from([(EngineId(0), MAX_STREAMS_PER_PEER as u32 - 4)]);
    let engines_share = [engine(12, 64, true)];
    let v_share = views(&engines_share);
    let holders_share = held(&engines_share, &[(0, Complete)]);
    let named = [engines_share[0].peer_id];
    let near_share = Asker {
        busy: &named,
        own: Some(&own),
        ..Default::default()
    };
    assert_eq!(
        stream_engine(&v_share, &holders_share, &near_share),
        Choice::Busy
    );
    let few = HashMap::from([(EngineId(0), 2)]);
    let far_from_share = Asker {
        own: Some(&few),
        ..near_share
    };
    assert_eq!(
        stream_engine(&v_share, &holders_share, &far_from_share),
        serving(0, false)
    );
}

#[test]
fn a_console_s_own_streams_leave_it_the_engine_in_turn() {
    // At --max-streams 1 and streaming to this console already: still its engine.
    let engines = [engine(1, 1, true)];
    let v = views(&engines);
    let holders = held(&engines, &[(0, Complete)]);
    let own = HashMap::from([(EngineId(0), 1)]);
    let mine = Asker {
        own: Some(&own),
        ..Default::default()
    };
    assert_eq!(stream_engine(&v, &holders, &mine), serving(0, false));
    // Another console finds it busy.
    assert_eq!(stream_engine(&v, &holders, &Asker::default()), Choice::Busy);
}

#[test]
fn copies_go_to_idle_non_holders_and_come_from_complete_holders() {
    let engines = [
        engine(1, 1, true),
        engine(0, 1, false),
        engine(0, 4, true),
        engine(2, 4, true),
        engine(0, 4, true),
    ];
    let v = views(&engines);
    let holders = held(&engines, &[(0, Complete), (4, Filling)]);
    // Engine 2: up, free, holds nothing (1 is down, 3 busier, 4 holds it).
    assert_eq!(idle_engine(&v, &holders, &[], 0), Some(EngineId(2)));
    assert_eq!(
        idle_engine(&v, &holders, &[engines[2].peer_id], 0),
        Some(EngineId(3))
    );
    // The source may be busy, never filling, down or avoided.
    assert_eq!(copy_source(&v, &holders, &[]), Some(EngineId(0)));
    assert_eq!(copy_source(&v, &holders, &[engines[0].peer_id]), None);
}

#[test]
fn an_overload_copies_from_a_busy_holder_to_an_idle_engine_that_can_copy() {
    // Engine 0 holds the segment and is at its limit; 1 is idle; 2 is down.
    let engines = [engine(2, 2, true), engine(0, 2, true), engine(0, 2, false)];
    let v = views(&engines);
    let holders = held(&engines, &[(0, Complete)]);
    let replication = Replication {
        from: EngineId(0),
        to: EngineId(1),
    };
    assert_eq!(overload(true, &v, &holders, &[], &[]), Some(replication));
    // A station without engine tokens copies nothing.
    assert_eq!(overload(false, &v, &holders, &[], &[]), None);
    // An engine whose last copy failed is no target, nor one the console avoided.
    let idle = [engines[1].peer_id];
    assert_eq!(overload(true, &v, &holders, &[], &idle), None);
    assert_eq!(overload(true, &v, &holders, &idle, &[]), None);
    // A holder the console could not reach is no source; a filling one neither.
    let holder = [engines[0].peer_id];
    assert_eq!(overload(true, &v, &holders, &holder, &[]), None);
    let filling = held(&engines, &[(0, Filling)]);
    assert_eq!(overload(true, &v, &filling, &[], &[]), None);
    // No idle engine: every engine busy or a holder.
    let full = [engine(2, 2, true), engine(2, 2, true)];
    let v = views(&full);
    assert_eq!(
        overload(true, &v, &held(&full, &[(0, Complete)]), &[], &[]),
        None
    );
}

#[test]
fn a_miss_copies_into_a_free_engine_with_room_or_sends_the_console_to_a_holder() {
    let mut small = engine(0, 4, true);
    small.capacity = 1000;
    small.used = 900;
    let mut roomy = engine(1, 4, true);
    roomy.capacity = 1_000_000;
    let engines = [small, roomy];
    let v = views(&engines);
    assert_eq!(
        miss(true, &v, &[], &[], 500),
        MissPlan::Copy { into: EngineId(1) }
    );
    assert_eq!(
        miss(true, &v, &[], &[], 50),
        MissPlan::Copy { into: EngineId(0) }
    );
    // Too big for any free engine: declined, the console goes to a holder.
    assert_eq!(miss(true, &v, &[], &[], 2_000_000), MissPlan::Declined);
    // Not enrolled: no copy at all.
    assert_eq!(miss(false, &v, &[], &[], 50), MissPlan::Redirect);
    // Every engine excluded (avoided, or its last copy failed): to a holder, not declined.
    let all = [engines[0].peer_id, engines[1].peer_id];
    assert_eq!(miss(true, &v, &[], &all, 50), MissPlan::Redirect);
}

#[test]
fn engines_exchange_consoles_only_when_that_balances_them() {
    let segment = SegmentId::new(ProgramId([3; 32]), 4);
    let other_segment = SegmentId::new(ProgramId([3; 32]), 5);
    let (new, other) = (PeerId::random(), PeerId::random());
    let filler = engine(0, 4, true);
    let serves = [(other_segment, PeerId::random()), (segment, other)];
    // The taker serves 2, the filler 0: the taker's other console of the segment moves.
    assert_eq!(
        exchange(segment, new, (2, &serves), Some(&filler)),
        Some(other)
    );
    // Balanced already: nothing moves.
    let even = engine(2, 4, true);
    assert_eq!(exchange(segment, new, (2, &serves), Some(&even)), None);
    // A filler that is down, or gone, takes nobody.
    let down = engine(0, 4, false);
    assert_eq!(exchange(segment, new, (2, &serves), Some(&down)), None);
    assert_eq!(exchange(segment, new, (2, &serves), None), None);
    // Only a console of the same segment, never the one being taken over.
    let mine = [(segment, new), (other_segment, other)];
    assert_eq!(exchange(segment, new, (2, &mine), Some(&filler)), None);
}

fn station(bandwidth_mbps: u32, coords: Option<(f64, f64)>) -> StationRecord {
    StationRecord {
        director: PeerId::random(),
        addrs: vec![],
        engines: vec![],
        region: None,
        coords,
        bandwidth_mbps,
        roles: Roles::default(),
        issuer: None,
        issued_ms: 0,
        expires_ms: u64::MAX,
        counters: Default::default(),
        certificate: None,
        revoked: vec![],
        http: None,
        https: false,
    }
}

const PARIS: (f64, f64) = (48.86, 2.35);
const BERLIN: (f64, f64) = (52.52, 13.40);
const TOKYO: (f64, f64) = (35.68, 139.69);
const MIB4: u64 = 4 * 1024 * 1024;

fn here() -> Link {
    Link {
        coords: Some(PARIS),
        region: None,
        bandwidth_mbps: 10_000,
    }
}

/// The cost of an idle source known only by what it advertises.
fn advertised(bandwidth_mbps: u32, at: (f64, f64)) -> f64 {
    cost(
        &here(),
        &station(bandwidth_mbps, Some(at)),
        (0, 8),
        MIB4,
        None,
        None,
    )
}

#[test]
fn distances_are_great_circles() {
    let d = great_circle_km(PARIS, BERLIN);
    assert!((870.0..890.0).contains(&d), "{d}");
}

#[test]
fn faster_links_and_nearer_stations_cost_less() {
    let slow = advertised(100, BERLIN);
    let fast = advertised(1000, BERLIN);
    assert!(fast < slow);
    let near = advertised(1000, BERLIN);
    let far = advertised(1000, TOKYO);
    assert!(near < far);
}

#[test]
fn a_loaded_source_costs_more() {
    let s = station(1000, Some(BERLIN));
    let idle = cost(&here(), &s, (0, 8), MIB4, None, None);
    let busy = cost(&here(), &s, (8, 8), MIB4, None, None);
    assert!(busy > 1.9 * (idle - 0.02));
}

#[test]
fn measurements_override_what_is_advertised() {
    // Advertised fast, measured slow: the measurement wins.
    let liar = station(10_000, Some(BERLIN));
    let honest = station(100, Some(BERLIN));
    let measured = cost(&here(), &liar, (0, 8), MIB4, Some(20e6), None);
    let believed = cost(&here(), &honest, (0, 8), MIB4, None, None);
    assert!(measured > believed);
    // A measured round trip replaces the distance estimate.
    let rtt = cost(
        &here(),
        &station(1000, Some(TOKYO)),
        (0, 8),
        MIB4,
        None,
        Some(Duration::from_millis(1)),
    );
    let estimated = advertised(1000, TOKYO);
    assert!(rtt < estimated);
}

fn holder(station: StationRecord, streams: u32) -> Holder {
    Holder {
        station,
        engine: PeerId::random(),
        addrs: vec![],
        streams,
        max_streams: 8,
    }
}

#[test]
fn sources_rank_cheapest_first_and_measurements_reorder_them() {
    let near = holder(station(1000, Some(BERLIN)), 0);
    let far = holder(station(1000, Some(TOKYO)), 0);
    let busy_near = holder(station(1000, Some(BERLIN)), 8);
    let order = |ranked: Vec<(f64, Holder)>| -> Vec<PeerId> {
        ranked.into_iter().map(|(_, h)| h.engine).collect()
    };
    let (throughput, rtt) = (HashMap::new(), HashMap::new());
    let measured = Measured {
        throughput: &throughput,
        rtt: &rtt,
    };
    let all = vec![far.clone(), busy_near.clone(), near.clone()];
    assert_eq!(
        order(rank(&here(), all.clone(), MIB4, measured)),
        vec![near.engine, busy_near.engine, far.engine]
    );
    // The near station's copies were measured at 2 Mbit/s: it goes last.
    let throughput = HashMap::from([(near.station_id(), 2e6), (busy_near.station_id(), 2e6)]);
    let measured = Measured {
        throughput: &throughput,
        rtt: &rtt,
    };
    assert_eq!(
        order(rank(&here(), all, MIB4, measured)),
        vec![far.engine, near.engine, busy_near.engine]
    );
}

#[test]
fn a_station_that_sent_bad_bytes_goes_after_every_other_and_costs_more_each_time() {
    let (liar, honest, slow) = (
        holder(station(1000, Some(BERLIN)), 0),
        holder(station(1000, Some(BERLIN)), 4),
        holder(station(1000, Some(TOKYO)), 0),
    );
    let (throughput, rtt) = (HashMap::new(), HashMap::new());
    let measured = Measured {
        throughput: &throughput,
        rtt: &rtt,
    };
    let all = vec![slow.clone(), honest.clone(), liar.clone()];
    let ranked = rank(&here(), all, MIB4, measured);
    let cost_of = |r: &[(f64, Holder)], h: &Holder| {
        (r.iter())
            .find(|(_, x)| x.engine == h.engine)
            .map(|(c, _)| *c)
    };
    let clean = cost_of(&ranked, &liar).unwrap_or_default();
    assert_eq!(ranked[0].1.engine, liar.engine, "the liar is cheapest");
    let failures = |n: u32| {
        let id = liar.station_id();
        move |s: StationId| if s == id { n } else { 0 }
    };
    let once = penalise(ranked.clone(), failures(1));
    let order: Vec<PeerId> = once.iter().map(|(_, h)| h.engine).collect();
    assert_eq!(order, vec![honest.engine, slow.engine, liar.engine]);
    let twice = penalise(ranked.clone(), failures(2));
    let (c1, c2) = (cost_of(&once, &liar), cost_of(&twice, &liar));
    assert_eq!(c1, Some(clean * (1.0 + PENALTY)));
    assert!(c2 > c1, "{c2:?} > {c1:?}");
    // Nobody failed: the order stands.
    let none = penalise(ranked.clone(), |_| 0);
    assert_eq!(none[0].1.engine, liar.engine);
}

fn target(region: &str, free: u64, home: bool) -> StationRecord {
    let mut s = station(1000, None);
    s.engines.push(engine(0, 1, true));
    s.engines[0].capacity = free;
    s.region = Some(region.into());
    s.roles.home = home;
    s
}

/// The directors of [`replica_targets`]' first `n`.
fn first(n: usize, targets: Vec<StationRecord>) -> Vec<PeerId> {
    targets.iter().take(n).map(|s| s.director).collect()
}

#[test]
fn targets_prefer_free_capacity_and_new_regions_and_skip_the_home() {
    let home = target("eu", 1000, true);
    let a = target("eu", 500, false);
    let b = target("eu", 400, false);
    let c = target("us", 100, false);
    let all = vec![home.clone(), a.clone(), b.clone(), c.clone()];
    let picked = first(2, replica_targets(&all, &[home.director], 0));
    assert_eq!(picked, vec![a.director, c.director]);
    let picked = first(3, replica_targets(&all, &[], 0));
    assert_eq!(picked, vec![a.director, c.director, b.director]);
}

#[test]
fn targets_without_room_for_the_program_are_passed_over() {
    let a = target("eu", 500, false);
    let b = target("eu", 400, false);
    let c = target("us", 100, false);
    let mut unbounded = target("us", 0, false);
    // Two engines, one bounded and full: the other, bounded only by its disks, has room.
    unbounded.engines.push(engine(0, 1, true));
    unbounded.engines[1].capacity = 10;
    unbounded.engines[1].used = 10;
    let all = vec![a.clone(), b.clone(), c.clone(), unbounded.clone()];
    let order = |size| first(4, replica_targets(&all, &[], size));
    // Control: what fits everywhere keeps the order (room, then regions).
    assert_eq!(
        order(100),
        vec![unbounded.director, a.director, b.director, c.director]
    );
    // c (100 bytes) is too small for 101: the rest keep their order.
    assert_eq!(order(101), vec![unbounded.director, a.director, b.director]);
    assert_eq!(order(450), vec![unbounded.director, a.director]);
    // Engines that are down give no room; what eviction may free does.
    let mut down = target("eu", 1000, false);
    down.engines[0].up = false;
    down.engines.push(engine(0, 1, true));
    down.engines[1].capacity = 300;
    down.engines[1].used = 300;
    down.engines[1].disks.push(DiskUsage {
        evictable: 200,
        ..Default::default()
    });
    assert_eq!(room(&down.engines), Some(200));
    assert_eq!(
        first(1, replica_targets(&[down.clone()], &[], 200)),
        vec![down.director]
    );
    assert!(replica_targets(&[down], &[], 201).is_empty());
}
