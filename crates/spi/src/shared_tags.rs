//! An instance's tags, shared between the descriptions that carry the same ones.
//!
//! The instances of a group mostly carry identical tags (the group, the config hash, the flavor's
//! tags): a controller describing 100,000 of them held 100,000 equal maps, about a kilobyte each,
//! and at times three or four observations at once (two thirds of its memory). A list of
//! descriptions read from the wire ([`interning`]) keeps one map per distinct set of tags, and a
//! copy of a description copies a pointer, not the map.
//!
//! Reading is as with a map (`SharedTags` dereferences to [`Tags`]); changing one description's
//! tags ([`SharedTags::make_mut`]) copies the map first if another description shares it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::instance::Tags;

/// Tags behind a shared pointer; see the module's documentation.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedTags(Arc<Tags>);

impl SharedTags {
    /// The tags to change, copied first when other descriptions share them.
    pub fn make_mut(&mut self) -> &mut Tags {
        Arc::make_mut(&mut self.0)
    }

    /// Whether `self` and `other` are one map (not just equal ones).
    pub fn shares_with(&self, other: &SharedTags) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for SharedTags {
    type Target = Tags;

    fn deref(&self) -> &Tags {
        &self.0
    }
}

impl From<Tags> for SharedTags {
    fn from(tags: Tags) -> SharedTags {
        SharedTags(Arc::new(tags))
    }
}

impl FromIterator<(String, String)> for SharedTags {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> SharedTags {
        SharedTags::from(iter.into_iter().collect::<Tags>())
    }
}

impl fmt::Debug for SharedTags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq<Tags> for SharedTags {
    fn eq(&self, other: &Tags) -> bool {
        *self.0 == *other
    }
}

impl Serialize for SharedTags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedTags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SharedTags, D::Error> {
        let tags = Tags::deserialize(d)?;
        Ok(
            INTERNER.with(|interner| match interner.borrow_mut().as_mut() {
                Some(interner) => interner.intern(tags),
                None => SharedTags::from(tags),
            }),
        )
    }
}

/// Hands out one shared map per distinct set of tags, for a plugin that keeps many descriptions
/// (instance-file's cache of 100,000 records).
#[derive(Default)]
pub struct TagInterner {
    seen: HashSet<Arc<Tags>>,
    /// How many maps the last [`TagInterner::sweep`] kept: the next one waits until there are
    /// twice as many, so sweeping costs a constant per map handed out.
    kept: usize,
}

impl TagInterner {
    /// The shared map equal to `tags`, made from them if there is none yet.
    pub fn intern(&mut self, tags: Tags) -> SharedTags {
        match self.seen.get(&tags) {
            Some(shared) => SharedTags(shared.clone()),
            None => {
                let shared = Arc::new(tags);
                self.seen.insert(shared.clone());
                SharedTags(shared)
            }
        }
    }

    /// `tags`, or the shared map equal to them.
    pub fn share(&mut self, tags: SharedTags) -> SharedTags {
        match self.seen.get(&*tags.0) {
            Some(shared) => SharedTags(shared.clone()),
            None => {
                self.seen.insert(tags.0.clone());
                tags
            }
        }
    }

    /// Forgets the maps nobody else holds any more, once there are twice as many as the last sweep
    /// kept (tags of instances long destroyed are not kept forever).
    pub fn sweep(&mut self) {
        if self.seen.len() < 2 * self.kept + 16 {
            return;
        }
        self.seen.retain(|shared| Arc::strong_count(shared) > 1);
        self.kept = self.seen.len();
    }

    /// How many distinct maps it holds.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

thread_local! {
    /// The interner of the [`interning`] call running on this thread, if any.
    static INTERNER: RefCell<Option<TagInterner>> = const { RefCell::new(None) };
}

/// Runs `read` (a deserialization) so that the equal tag maps it reads are one shared map. The
/// sharing ends with the call: nothing is kept for the next one. Calls may nest (the inner one
/// shares with itself only).
pub fn interning<R>(read: impl FnOnce() -> R) -> R {
    let outer = INTERNER.with(|i| i.borrow_mut().replace(TagInterner::default()));
    // Restored even if `read` panics, so a later read on this thread is not interned by mistake.
    struct Restore(Option<TagInterner>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            INTERNER.with(|i| *i.borrow_mut() = outer);
        }
    }
    let _restore = Restore(outer);
    read()
}

/// `deserialize_with` for a list of things carrying tags: `null` reads as empty, and equal tags
/// in the list are one map ([`interning`]).
pub fn interned_list<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    interning(|| Ok(Option::<T>::deserialize(de)?.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Description;

    #[test]
    fn a_list_read_from_json_shares_equal_tags_and_keeps_different_ones_apart() {
        let json = r#"[
            {"ID": "a", "Tags": {"group": "g", "tier": "web"}},
            {"ID": "b", "Tags": {"tier": "web", "group": "g"}},
            {"ID": "c", "Tags": {"group": "g", "tier": "db"}},
            {"ID": "d", "Tags": null}
        ]"#;
        let list: Vec<Description> =
            interning(|| serde_json::from_str(json)).expect("descriptions");
        assert!(list[0].tags.shares_with(&list[1].tags));
        assert!(!list[0].tags.shares_with(&list[2].tags));
        assert_eq!(list[2].tags.get("tier").map(String::as_str), Some("db"));
        assert!(list[3].tags.is_empty());
        // Outside `interning`, equal maps are read as maps of their own.
        let again: Vec<Description> = serde_json::from_str(json).expect("descriptions");
        assert!(!again[0].tags.shares_with(&again[1].tags));
        assert_eq!(again, list);
    }

    #[test]
    fn the_answers_that_carry_many_descriptions_share_their_tags() {
        let listed = r#"{"ID": "a", "Tags": {"group": "g"}}, {"ID": "b", "Tags": {"group": "g"}}"#;
        let answer: crate::messages::DescribeInstancesResponse =
            serde_json::from_str(&format!(r#"{{"Descriptions": [{listed}]}}"#)).expect("answer");
        assert!(answer.descriptions[0]
            .tags
            .shares_with(&answer.descriptions[1].tags));
        let group: crate::group::GroupDescription =
            serde_json::from_str(&format!(r#"{{"Instances": [{listed}]}}"#)).expect("group");
        assert!(group.instances[0]
            .tags
            .shares_with(&group.instances[1].tags));
        // Go's null list still reads as empty.
        let none: crate::messages::DescribeInstancesResponse =
            serde_json::from_str(r#"{"Descriptions": null}"#).expect("null");
        assert!(none.descriptions.is_empty());
    }

    #[test]
    fn changing_shared_tags_changes_only_that_description() {
        let mut a = Description {
            id: "a".into(),
            tags: Tags::from([("group".to_string(), "g".to_string())]).into(),
            ..Description::default()
        };
        let b = a.clone();
        assert!(a.tags.shares_with(&b.tags));
        a.tags.make_mut().insert("extra".into(), "1".into());
        assert_eq!(a.tags.len(), 2);
        assert_eq!(b.tags.len(), 1);
        assert_eq!(
            serde_json::to_string(&b.tags).expect("json"),
            r#"{"group":"g"}"#
        );
    }

    #[test]
    fn an_interner_shares_equal_maps_and_sweeps_the_ones_nobody_holds() {
        let mut interner = TagInterner::default();
        let map = |v: &str| -> Tags { [("tier".to_string(), v.to_string())].into() };
        let web = interner.intern(map("web"));
        let again = interner.share(SharedTags::from(map("web")));
        assert!(web.shares_with(&again));
        for i in 0..40 {
            interner.intern(map(&i.to_string()));
        }
        assert_eq!(interner.len(), 41);
        interner.sweep();
        assert_eq!(interner.len(), 1, "only the map still held is kept");
        assert!(interner.intern(map("web")).shares_with(&web));
    }
}
