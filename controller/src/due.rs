//! When each Deployment next needs the sleeper's look, by time alone: the end of its idle
//! timeout, of its drain, or of a wait before a retry. The sleeper looks at what is due and
//! at what changed, so a quiet fleet of thousands costs nothing between events (pure; the
//! sleeper owns one).
//!
//! ```text
//!  watch event ──▶ touched keys ─┐
//!  due here ─────────────────────┼──▶ one look each ──▶ decide ──▶ schedule the next look
//!  draining keys (activity) ─────┘
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::cache::Key;

/// A timer queue with one live entry per Deployment: the earliest asked for.
#[derive(Debug, Default)]
pub struct Due {
    queue: BinaryHeap<Reverse<(u64, Key)>>,
    at: HashMap<Key, u64>,
}

impl Due {
    /// Asks for a look at `key` at `when` (ms on the monotonic clock), unless one is already
    /// due earlier: a look that comes early finds nothing to do and asks again.
    pub fn at(&mut self, key: &Key, when: u64) {
        match self.at.get_mut(key) {
            Some(t) if *t <= when => return,
            Some(t) => *t = when,
            None => {
                self.at.insert(key.clone(), when);
            }
        }
        self.queue.push(Reverse((when, key.clone())));
        // Entries replaced by earlier ones stay in the heap until popped; never let them
        // outnumber the live ones.
        if self.queue.len() > 2 * self.at.len() + 64 {
            self.queue = self
                .at
                .iter()
                .map(|(k, t)| Reverse((*t, k.clone())))
                .collect();
        }
    }

    /// The keys due at `now` or before, each once; their entries are gone.
    pub fn take(&mut self, now: u64) -> Vec<Key> {
        let mut due = Vec::new();
        while let Some(Reverse((when, _))) = self.queue.peek() {
            if *when > now {
                break;
            }
            let Some(Reverse((when, key))) = self.queue.pop() else {
                break;
            };
            // Only the live entry counts: an older one was replaced or forgotten.
            if self.at.get(&key) == Some(&when) {
                self.at.remove(&key);
                due.push(key);
            }
        }
        due
    }

    /// No more looks at `key` (no longer managed).
    pub fn forget(&mut self, key: &Key) {
        self.at.remove(key);
    }

    /// No looks at all (leadership lost).
    pub fn clear(&mut self) {
        self.at.clear();
        self.queue.clear();
    }

    /// How many Deployments have a look due.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[test]
    fn keys_come_due_in_time_order_and_only_once() {
        let mut due = Due::default();
        due.at(&key("b"), 200);
        due.at(&key("a"), 100);
        due.at(&key("c"), 300);
        assert!(due.take(99).is_empty());
        assert_eq!(due.take(200), vec![key("a"), key("b")]);
        assert!(due.take(250).is_empty(), "taken keys are not due again");
        assert_eq!(due.take(1_000), vec![key("c")]);
        assert!(due.is_empty());
    }

    #[test]
    fn the_earliest_look_asked_for_wins() {
        let mut due = Due::default();
        due.at(&key("a"), 500);
        due.at(&key("a"), 800);
        assert_eq!(
            due.take(600),
            vec![key("a")],
            "a later ask keeps the earlier look"
        );
        due.at(&key("a"), 800);
        due.at(&key("a"), 300);
        assert_eq!(
            due.take(400),
            vec![key("a")],
            "an earlier ask moves it forward"
        );
        assert!(
            due.take(900).is_empty(),
            "the replaced entry is not a second look"
        );
    }

    #[test]
    fn a_forgotten_key_is_never_due() {
        let mut due = Due::default();
        due.at(&key("a"), 100);
        due.forget(&key("a"));
        assert!(due.take(1_000).is_empty());
        due.at(&key("a"), 2_000);
        assert_eq!(
            due.take(2_000),
            vec![key("a")],
            "asked again after forgetting"
        );
    }

    #[test]
    fn replaced_entries_never_pile_up() {
        let mut due = Due::default();
        for t in (0..10_000u64).rev() {
            due.at(&key("a"), t + 1_000);
        }
        assert_eq!(due.len(), 1);
        assert!(due.queue.len() <= 2 + 64, "{} entries", due.queue.len());
        assert_eq!(due.take(1_000), vec![key("a")]);
    }
}
