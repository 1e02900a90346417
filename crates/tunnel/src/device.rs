//! The virtual IP device between the peers table and smoltcp: decrypted packets wait in
//! `rx` for the stack, packets the stack emits wait in `tx` for encryption. Both queues
//! are bounded; what the `rx` bound refuses is counted (the stack's TCP retransmits).

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

pub(crate) struct VirtualDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    limit: usize,
    mtu: usize,
    pub(crate) rx_dropped: u64,
}

impl VirtualDevice {
    pub(crate) fn new(mtu: usize, limit: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            limit,
            mtu,
            rx_dropped: 0,
        }
    }

    /// Queues a decrypted packet for the stack; refuses (and counts) it when full or
    /// larger than the MTU.
    pub(crate) fn push_rx(&mut self, packet: &[u8]) {
        if self.rx.len() >= self.limit || packet.len() > self.mtu {
            self.rx_dropped += 1;
            return;
        }
        self.rx.push_back(packet.to_vec());
    }

    pub(crate) fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }
}

pub(crate) struct RxToken(Vec<u8>);

pub(crate) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        self.0.push_back(packet);
        result
    }
}

impl phy::Device for VirtualDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        (self.tx.len() < self.limit).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Every packet arriving here was authenticated by WireGuard's AEAD, which covers
        // far more than a checksum; compute checksums only for what we send.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.icmpv4 = Checksum::Tx;
        caps
    }
}
