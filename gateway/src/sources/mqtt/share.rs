//! Sharing one stream between several weir processes: MQTT shared
//! subscriptions (`$share/<group>/<filter>`), and adopting the session of
//! a member that died. Free of I/O.
//!
//! The broker hands each message on a shared filter to one member of the
//! group. A member with a persistent session that dies keeps its session
//! at the broker, and mosquitto goes on handing it its share of the
//! stream, which waits there, with what it held unacknowledged, until the
//! member comes back. So the members watch each other: each announces
//! itself on `weir/share/<group>/members/<client id>` (retained `up`, and
//! a retained will `down`). When one goes down, the next member after it
//! (by client id, among those up) connects with the dead member's client
//! id, unsubscribes it from the shared filters (the broker stops sending
//! it new messages), takes in everything its session held, acknowledges
//! it once synced, and then ends the session (a clean connect), and
//! clears the announcement. If the dead member comes back meanwhile, it
//! takes its session back and the adopter stops.

use std::collections::BTreeSet;

use crate::common::topic::shared;

/// What a member announces.
pub const UP: &[u8] = b"up";
/// What its will says.
pub const DOWN: &[u8] = b"down";

/// The share group a source takes part in as a member that can adopt and
/// be adopted: its first shared filter's group, for a persistent MQTT
/// 3.1.1 session (`clean_session` false, `version` 4).
pub fn group<'a>(
    clean_session: bool,
    version: u8,
    filters: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    if clean_session || version != 4 {
        return None;
    }
    filters.into_iter().find_map(|f| shared(f).map(|(g, _)| g))
}

/// The filter a member watches the others on.
pub fn members_filter(group: &str) -> String {
    format!("weir/share/{group}/members/+")
}

/// Where member `client` announces itself.
pub fn member_topic(group: &str, client: &str) -> String {
    format!("weir/share/{group}/members/{client}")
}

/// The client id in a member topic of `group`.
pub fn member_of<'a>(group: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix("weir/share/")?
        .strip_prefix(group)?
        .strip_prefix("/members/")
        .filter(|c| !c.is_empty() && !c.contains('/'))
}

/// One member's view of its group.
#[derive(Debug, Clone)]
pub struct Members {
    me: String,
    up: BTreeSet<String>,
    down: BTreeSet<String>,
    /// Sessions this member is adopting, or adopted.
    adopting: BTreeSet<String>,
}

impl Members {
    /// The view of member `me`.
    pub fn new(me: &str) -> Members {
        Members {
            me: me.to_string(),
            up: BTreeSet::new(),
            down: BTreeSet::new(),
            adopting: BTreeSet::new(),
        }
    }

    /// An announcement of `client`: `up`, `down`, or empty (cleared).
    /// Returns the client ids this member should now adopt.
    pub fn announced(&mut self, client: &str, state: &[u8]) -> Vec<String> {
        if client == self.me {
            return Vec::new();
        }
        self.up.remove(client);
        self.down.remove(client);
        match state {
            UP => {
                self.up.insert(client.to_string());
                // Back: its session is its own again.
                self.adopting.remove(client);
            }
            DOWN => {
                self.down.insert(client.to_string());
            }
            _ => {
                self.adopting.remove(client);
            }
        }
        self.due()
    }

    /// Dead members whose adopter is this one, not yet being adopted.
    fn due(&mut self) -> Vec<String> {
        let dead: Vec<String> = self
            .down
            .iter()
            .filter(|d| !self.adopting.contains(*d) && self.adopter_of(d) == self.me)
            .cloned()
            .collect();
        self.adopting.extend(dead.iter().cloned());
        dead
    }

    /// Who adopts `dead`: the first live member after it by client id,
    /// wrapping around (this member counts as live).
    pub fn adopter_of(&self, dead: &str) -> &str {
        let live: BTreeSet<&str> = self
            .up
            .iter()
            .map(String::as_str)
            .chain([self.me.as_str()])
            .collect();
        live.iter()
            .find(|c| **c > dead)
            .or_else(|| live.iter().next())
            .copied()
            .unwrap_or(&self.me)
    }

    /// The adoption of `client` ended (finished, or its owner came
    /// back); a later `down` may start another.
    pub fn adopted(&mut self, client: &str) {
        self.adopting.remove(client);
        self.down.remove(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_persistent_mqtt_3_session_on_a_shared_filter_is_a_member() {
        let f = ["sensors/#", "$share/weir/a/+", "$share/other/b"];
        assert_eq!(group(false, 4, f), Some("weir"));
        assert_eq!(group(true, 4, f), None);
        assert_eq!(group(false, 5, f), None);
        assert_eq!(group(false, 4, ["sensors/#"]), None);
    }

    #[test]
    fn member_topics_round_trip() {
        let t = member_topic("weir", "weir-gw2-sensors");
        assert_eq!(member_of("weir", &t), Some("weir-gw2-sensors"));
        assert_eq!(member_of("other", &t), None);
        assert_eq!(member_of("weir", "weir/share/weir/members/"), None);
        assert_eq!(member_of("weir", "weir/share/weir/members/a/b"), None);
    }

    #[test]
    fn exactly_one_live_member_adopts_a_dead_one() {
        let ids = ["a", "b", "c", "d"];
        for dead in ids {
            let mut adopters = Vec::new();
            for me in ids.iter().filter(|m| **m != dead) {
                let mut m = Members::new(me);
                for other in ids.iter().filter(|o| *o != me) {
                    m.announced(other, UP);
                }
                if m.announced(dead, DOWN) == vec![dead.to_string()] {
                    adopters.push(*me);
                }
            }
            assert_eq!(adopters.len(), 1, "{dead}: {adopters:?}");
        }
    }

    #[test]
    fn the_adopter_is_the_next_live_member() {
        let mut m = Members::new("b");
        m.announced("a", UP);
        m.announced("c", UP);
        assert_eq!(m.adopter_of("a"), "b");
        assert_eq!(m.adopter_of("b"), "c");
        assert_eq!(m.adopter_of("c"), "a");
        // c is down too: a's adopter is still b, c's wraps to a.
        m.announced("c", DOWN);
        assert_eq!(m.adopter_of("c"), "a");
        // Alone: this member adopts everyone.
        let mut alone = Members::new("b");
        assert_eq!(alone.announced("a", DOWN), vec!["a".to_string()]);
    }

    #[test]
    fn an_adoption_starts_once_and_ends_when_the_owner_returns() {
        let mut m = Members::new("c");
        m.announced("b", UP);
        assert_eq!(m.announced("b", DOWN), vec!["b".to_string()]);
        // Repeated news starts nothing new.
        assert!(m.announced("a", UP).is_empty());
        assert!(m.announced("b", DOWN).is_empty());
        // b came back: the next death is a new adoption.
        assert!(m.announced("b", UP).is_empty());
        assert_eq!(m.announced("b", DOWN), vec!["b".to_string()]);
        m.adopted("b");
        // Cleared after adoption: nothing to do.
        assert!(m.announced("b", b"").is_empty());
        // Not the next live member after the dead one: another adopts.
        m.announced("d", UP);
        assert!(m.announced("c2", DOWN).is_empty(), "d adopts c2");
        assert_eq!(m.adopter_of("c2"), "d");
    }

    #[test]
    fn its_own_announcements_are_ignored() {
        let mut m = Members::new("a");
        assert!(m.announced("a", DOWN).is_empty());
    }
}
