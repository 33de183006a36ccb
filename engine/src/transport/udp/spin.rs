//! Busy-polling the ring's flags before a park: [`UdpRing::spin_poll`] for a fixed budget,
//! and [`UdpRing::spin_adaptive`], which spins only while a request/response exchange is in
//! flight and backs off when spinning does not pay.

use std::time::{Duration, Instant};

use super::{UdpError, UdpHandler, UdpRing};

/// Spins in a row that did not pay before the adaptive spin backs off.
const SPIN_FAILS_MAX: u32 = 2;

/// Chances to spin the adaptive spin skips at most after spins that did not pay.
const SPIN_BACKOFF_MAX: u32 = 1024;

/// The adaptive spin's state ([`UdpRing::spin_adaptive`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct SpinState {
    /// Chances left to skip.
    pub(super) skip: u32,
    /// Chances to skip after the next failed pair.
    pub(super) backoff: u32,
    /// Spins in a row that did not pay.
    pub(super) fails: u32,
}

impl UdpRing {
    /// Busy-polls for up to `spin` before the caller parks: watches the ring's flags (no
    /// system call) and polls as soon as work is pending. Returns the completions seen (0
    /// if none came in time). Trades CPU for wake-up latency; `spin` zero returns at once.
    pub fn spin_poll<H: UdpHandler>(
        &mut self,
        handler: &mut H,
        spin: Duration,
    ) -> Result<usize, UdpError> {
        if spin.is_zero() {
            return Ok(0);
        }
        if self.spin_until_ready(spin)?.is_some() {
            return self.poll(handler);
        }
        Ok(0)
    }

    /// Submits what the last poll left for the park (the spin may find its answer), then
    /// watches the ring's flags for up to `spin` (no system call); returns how long it took
    /// for work to show up, if it did.
    fn spin_until_ready(&mut self, spin: Duration) -> Result<Option<Duration>, UdpError> {
        if self.park.sq_pending.get() > 0 {
            self.submit_pending()?;
        }
        let started = Instant::now();
        loop {
            let pending = {
                let mut sq = self.ring.submission();
                sq.sync();
                sq.taskrun()
            } || !self.ring.completion().is_empty();
            let waited = started.elapsed();
            if pending {
                return Ok(Some(waited));
            }
            if waited >= spin {
                return Ok(None);
            }
            std::hint::spin_loop();
        }
    }

    /// [`UdpRing::spin_poll`] for at most `UdpConfig::spin_us_max`, but only while a
    /// request/response exchange is in flight and only while spinning pays. Call it after
    /// [`UdpRing::poll`], right before parking.
    ///
    /// It spins only if the last poll that reaped anything both received and sent datagrams
    /// (an answer or the next request is likely on its way; a spin that finds nothing ends
    /// that until the next such poll), and backs off when spins do not pay: after two spins
    /// in a row that found nothing within the budget (or were preempted past it), it skips
    /// the next 1, 2, 4, ... 1,024 chances, and a spin that pays resets that. So an idle
    /// shard never spins, and a shard whose peers answer slowly (or share its CPU, where
    /// spinning only delays the answer) spins on at most one park in a thousand.
    pub fn spin_adaptive<H: UdpHandler>(&mut self, handler: &mut H) -> Result<usize, UdpError> {
        let budget = Duration::from_micros(self.config.spin_us_max);
        if budget.is_zero() || self.last_poll_received == 0 || self.last_poll_sent == 0 {
            return Ok(0);
        }
        if self.spin.skip > 0 {
            self.spin.skip -= 1;
            return Ok(0);
        }
        self.counters.spins += 1;
        match self.spin_until_ready(budget)? {
            Some(waited) if waited < budget => {
                self.spin.fails = 0;
                self.spin.backoff = 1;
                self.counters.spins_paid += 1;
                self.poll(handler)
            }
            found => {
                // Nothing came in time: the exchange is over (or the peer shares this CPU).
                // Spin again only after a poll that both receives and sends.
                self.last_poll_received = 0;
                self.last_poll_sent = 0;
                self.spin.fails += 1;
                if self.spin.fails >= SPIN_FAILS_MAX {
                    self.spin.fails = 0;
                    self.spin.skip = self.spin.backoff;
                    self.spin.backoff = (self.spin.backoff * 2).min(SPIN_BACKOFF_MAX);
                }
                if found.is_some() {
                    return self.poll(handler);
                }
                Ok(0)
            }
        }
    }
}
