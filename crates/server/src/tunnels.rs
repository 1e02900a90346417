//! A placeholder of the management tunnel's interface (the `plumb` branch brings the
//! real one): what onboarding asks of a gateway's tunnels.

use std::net::{IpAddr, Ipv4Addr};

use domain::{RegionId, RouterId};

/// A region's tunnel, as routers are told to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTunnelInfo {
    pub public_key: String,
    pub gateway_address: Ipv4Addr,
    pub endpoint: String,
}

/// What the server asks of a gateway's tunnels.
pub trait TunnelGateway {
    fn admit_peer(
        &self,
        router: RouterId,
        region: RegionId,
        public_key: &str,
        address: IpAddr,
    ) -> Result<(), String>;
    fn region(&self, region: RegionId) -> Option<RegionTunnelInfo>;
}

/// No tunnel yet.
#[derive(Debug, Clone, Copy)]
pub struct Tunnels;

impl TunnelGateway for Tunnels {
    fn admit_peer(&self, _: RouterId, _: RegionId, _: &str, _: IpAddr) -> Result<(), String> {
        Ok(())
    }

    fn region(&self, _: RegionId) -> Option<RegionTunnelInfo> {
        None
    }
}
