//! Recovering where a steered connection was going, on the agent's accept
//! path: a handle of its own on the pinned `NW_EG_PEERS` map, shareable
//! across tasks, so serving never waits on the enrolment lock.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError};
use nodeward_common::egress::{OriginalDst, PEERS_MAP, PeerKey};

use super::EbpfError;

/// Original destinations of steered connections; see
/// [`super::EgressSteering::original_destinations`].
pub struct OriginalDestinations {
    // aya's removal takes `&mut`; each call holds the lock for two map
    // system calls, about a microsecond.
    peers: Mutex<BpfHashMap<MapData, PeerKey, OriginalDst>>,
}

impl std::fmt::Debug for OriginalDestinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OriginalDestinations")
    }
}

fn map_error(what: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::Map {
        map: PEERS_MAP,
        what,
        source: Box::new(source),
    }
}

impl OriginalDestinations {
    pub(super) fn open(dir: &Path) -> Result<Self, EbpfError> {
        let data = MapData::from_pin(dir.join(PEERS_MAP)).map_err(map_error("opening the pin"))?;
        let map = Map::from_map_data(data).map_err(map_error("opening the pin"))?;
        let peers = BpfHashMap::try_from(map).map_err(map_error("checking its type"))?;
        Ok(Self {
            peers: Mutex::new(peers),
        })
    }

    /// Where the connection the egress listener of workload `workload_id`
    /// accepted from `peer` (the accepted socket's peer address) was going,
    /// and forgets it: one answer per connection. `None` when nothing was
    /// recorded, i.e. the connection was not steered (someone in the pod
    /// dialled the listener directly) or its record was lost: close it,
    /// never guess.
    pub fn take(&self, workload_id: u32, peer: SocketAddr) -> Result<Option<SocketAddr>, EbpfError> {
        let key = PeerKey::new(workload_id, peer.port(), mapped(peer.ip()).octets());
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dst = match peers.get(&key, 0) {
            Ok(dst) => dst,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(map_error("reading a record")(e)),
        };
        match peers.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
            Err(e) => return Err(map_error("removing a record")(e)),
        }
        let ip = Ipv6Addr::from(dst.addr).to_canonical();
        Ok(Some(SocketAddr::new(ip, dst.port)))
    }
}

/// IPv4 as `::ffff:a.b.c.d`, as the programs key it.
pub(super) fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}
