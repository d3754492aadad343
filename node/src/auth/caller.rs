//! Who asks the auth server for an admin operation ([`Caller`]), and the subscriber an admin
//! adds ([`User`]).

use libp2p::PeerId;
use vodmesh_proto::token::Rights;

/// Who asks for an admin operation: the peer on the authenticated connection, and the admin
/// token it presented, if any.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The remote peer.
    pub peer: PeerId,
    /// Its admin token.
    pub token: Option<&'a [u8]>,
}

impl<'a> Caller<'a> {
    /// `peer`, with the admin token a request carried, if any.
    pub fn new(peer: PeerId, token: Option<&'a serde_bytes::ByteBuf>) -> Self {
        Self {
            peer,
            token: token.map(|t| t.as_slice()),
        }
    }
}

/// A user to add: admin or not, and what it may watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Receives admin tokens on [`Server::admin_login`].
    pub admin: bool,
    /// Programs it may watch.
    pub rights: Rights,
}
