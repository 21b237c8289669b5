//! Connection limits: open client connections in total (checked at accept) and per client
//! (address prefix, [`crate::client_prefix`]; checked once the client is known, after a PROXY
//! header if there is one). A connection over a limit is closed at once and counted; the others
//! are not affected. Checked once per connection, never per request. Only clients with open
//! connections are remembered, so the table is bounded by `limits.max_connections`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::client_prefix::ClientPrefix;

#[derive(Debug, Default)]
pub struct ConnectionGate {
    total: AtomicUsize,
    per_client: Mutex<HashMap<ClientPrefix, usize>>,
}

/// Holds a place in the total count until dropped.
#[derive(Debug)]
pub struct TotalPlace<'a>(&'a ConnectionGate);

/// Holds a place in a client's count until dropped.
#[derive(Debug)]
pub struct ClientPlace<'a>(&'a ConnectionGate, ClientPrefix);

impl ConnectionGate {
    pub fn admit(&self, limit: usize) -> Option<TotalPlace<'_>> {
        let admitted = self
            .total
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < limit).then_some(open + 1)
            })
            .is_ok();
        admitted.then_some(TotalPlace(self))
    }

    pub fn admit_client(&self, client: ClientPrefix, limit: usize) -> Option<ClientPlace<'_>> {
        let mut counts = self.per_client.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = counts.entry(client).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(ClientPlace(self, client))
    }
}

impl Drop for TotalPlace<'_> {
    fn drop(&mut self) {
        self.0.total.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for ClientPlace<'_> {
    fn drop(&mut self) {
        let mut counts = self
            .0
            .per_client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(open) = counts.get_mut(&self.1) {
            *open -= 1;
            if *open == 0 {
                // Bounded memory: only addresses with open connections are remembered.
                counts.remove(&self.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_places_are_given_back() {
        let gate = ConnectionGate::default();
        let first = gate.admit(2);
        let second = gate.admit(2);
        assert!(first.is_some() && second.is_some());
        assert!(gate.admit(2).is_none());
        drop(first);
        assert!(gate.admit(2).is_some());

        let prefixes = crate::client_prefix::ClientPrefixes::default();
        let client = |text: &str| prefixes.of(text.parse().unwrap());
        let one = gate.admit_client(client("192.0.2.1"), 1);
        assert!(one.is_some());
        assert!(
            gate.admit_client(client("::ffff:192.0.2.1"), 1).is_none(),
            "the mapped spelling is the same client"
        );
        drop(one);
        assert!(gate.admit_client(client("192.0.2.1"), 1).is_some());
        assert!(gate.per_client.lock().unwrap().is_empty());

        // Two addresses of one IPv6 /64 are one client; another /64 is another.
        let first = gate.admit_client(client("2001:db8:1:2::1"), 1);
        assert!(first.is_some());
        assert!(gate.admit_client(client("2001:db8:1:2::ffff"), 1).is_none());
        assert!(gate.admit_client(client("2001:db8:1:3::1"), 1).is_some());
    }
}
