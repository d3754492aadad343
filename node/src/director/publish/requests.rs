//! What peers ask of the programs this station knows: `Playable`, `Manifest` and
//! `Programs`, answered from what is known (the catalog, the manifests kept, a manifest
//! fetched lately) or from a task that fetches the rest ([`Done`]).

use libp2p::PeerId;
use vodmesh_proto::ProgramId;
use vodmesh_proto::director::Response;
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::time::now_ms;

use super::{Done, Publishing, answer};
use crate::director::catalog::{self, Viewer, fetch_record};
use crate::director::context::{Client, Ctx, Reply};
use crate::director::error::Error;

impl Publishing {
    /// The manifest of published `program` that a `Manifest` fetched lately, verified: a
    /// console's first `Locate`s follow its `Manifest` at once, and their misses need not
    /// ask the content manager for it again.
    pub(in crate::director) fn recent_manifest(&self, program: &ProgramId) -> Option<Manifest> {
        let signed = self.fetches.recent_manifest(program)?;
        Manifest::verify(&signed).ok()
    }

    /// The signed manifest of `program` if this station catalogs it or keeps it.
    fn local_manifest(ctx: &Ctx<'_>, program: &ProgramId) -> Result<Option<Signed>, Error> {
        let own = match ctx.catalog {
            Some(catalog) => catalog.get(program)?,
            None => None,
        };
        let entry = match own {
            Some(entry) => Some(entry),
            None => ctx.kept.get(program)?,
        };
        Ok(entry.map(|e| e.manifest))
    }

    /// `Playable`: answered from what is known when that says playable; otherwise after the
    /// registry's record was fetched (this director may not have heard the publish message).
    pub(in crate::director) fn playable_request(
        &mut self,
        ctx: &Ctx<'_>,
        (program, peer): (ProgramId, PeerId),
        channel: Client,
    ) -> Option<Reply> {
        let own = (ctx.catalog).is_some_and(|c| c.get(&program).ok().flatten().is_some());
        let known = self.playable(ctx, &program);
        if own || known.is_ok() {
            return Some((channel, answer(known)));
        }
        match self.fetches.playable(program, peer, channel) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(busy) => return Some(*busy),
        }
        let (registry, owner) = (ctx.registry.clone(), self.owner(ctx, &program));
        self.tasks.spawn(async move {
            let record = fetch_record(&registry, program, owner).await;
            Done::Fetched { program, record }
        });
        None
    }

    /// `Manifest`: the signed manifest of a program this station catalogs or keeps; else
    /// fetched from its content manager or a holder (answered from a task). A program not
    /// published yet only for a viewer that may see it ([`Viewer`]).
    pub(in crate::director) fn manifest(
        &mut self,
        ctx: &Ctx<'_>,
        (program, viewer, peer): (ProgramId, Viewer, PeerId),
        channel: Client,
    ) -> Option<Reply> {
        let local = match Self::local_manifest(ctx, &program) {
            Ok(local) => local,
            Err(e) => return Some((channel, Response::Error(e.into()))),
        };
        let known = self.known_record(ctx, &program);
        let seen = viewer == Viewer::Trusted
            || (known.as_ref()).is_some_and(|l| l.record.playable(now_ms()));
        if let (Some(signed), true) = (&local, seen) {
            return Some((channel, Response::Manifest(signed.clone())));
        }
        if let Some(signed) = self.fetches.recent_manifest(&program) {
            return Some((channel, Response::Manifest(signed)));
        }
        match self.fetches.manifest(program, viewer, peer, channel) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(busy) => return Some(*busy),
        }
        // What is known may be stale (the program published since): fetched again first.
        let known = known.map(|known| (known, seen));
        let (registry, asker, me) = (ctx.registry.clone(), ctx.asker.clone(), ctx.me.peer_id);
        self.tasks.spawn(async move {
            let with = (&registry, &asker, me);
            let fetched = catalog::manifest_for(with, (program, viewer), known, local).await;
            let key = (program, viewer);
            Done::Manifest { key, fetched }
        });
        None
    }

    /// `Programs` of a peer: the swarm's catalog as its viewer may see it, from a listing
    /// shared with other askers ([`Listing`](crate::director::listing::Listing)).
    pub(in crate::director) fn programs(
        &mut self,
        ctx: &Ctx<'_>,
        asker: (PeerId, Viewer),
        channel: Client,
    ) -> Option<Reply> {
        let now = (tokio::time::Instant::now(), now_ms());
        let asked = self.listing.ask(now, asker, channel);
        if asked.list {
            self.list(ctx);
        }
        asked.replies
    }

    /// Starts a listing: this station's own list, read here, and the swarm's, walked in a
    /// task ([`Done::Listed`]).
    pub(super) fn list(&mut self, ctx: &Ctx<'_>) {
        let local = catalog::held(ctx);
        let (walks, registry) = (ctx.walks.clone(), ctx.registry.clone());
        let (asker, silent, me) = (ctx.asker.clone(), self.silent.clone(), ctx.me.peer_id);
        self.tasks.spawn(async move {
            let with = (&walks, registry);
            let listed = match local {
                Ok(local) => catalog::swarm_programs(with, (asker, &silent), me, local).await,
                Err(e) => Err(e),
            };
            Done::Listed(listed)
        });
    }
}
