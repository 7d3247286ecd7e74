//! The order in which releases were activated, and which ones were rolled back from.
//!
//! Deploy tools roll back one step further on each `rollback` and never return to the release
//! they just left: Deployer marks it bad (`BAD` file), Capistrano archives it
//! (`deploy:cleanup_rollback`). A plain "previous release" toggles instead, so a second
//! rollback went straight back to the broken release. This keeps the activations as a stack
//! (oldest first, the active release last): `rollback` pops the active release, marks it
//! rolled back, and serves the newest remaining entry that is neither marked nor gone. A mark
//! lasts until that release is activated again.

/// How many activations are remembered. The state file trims further (oldest first) when the
/// names are too long to fit its slot.
pub(crate) const MAX_ENTRIES: usize = 50;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Activations, oldest first; the last one is the active release.
    entries: Vec<String>,
    /// Releases rolled back from and not activated since; rollback skips them.
    rolled_back: Vec<String>,
}

impl History {
    /// A history as persisted.
    pub fn new(entries: Vec<String>, rolled_back: Vec<String>) -> History {
        let mut h = History {
            entries,
            rolled_back,
        };
        h.tidy();
        h
    }

    /// The history of a state file written before histories existed: what it knew, the
    /// previous release and then the active one.
    pub fn from_previous(active: &str, previous: Option<&str>) -> History {
        let entries = previous.into_iter().chain([active]).map(str::to_string);
        History::new(entries.collect(), Vec::new())
    }

    /// Oldest first, the active release last.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    pub fn rolled_back(&self) -> &[String] {
        &self.rolled_back
    }

    pub fn is_rolled_back(&self, name: &str) -> bool {
        self.rolled_back.iter().any(|n| n == name)
    }

    /// The history after `name` is activated by hand (or a deploy): appended, and no longer
    /// marked as rolled back.
    pub fn activated(&self, name: &str) -> History {
        let mut next = self.clone();
        next.rolled_back.retain(|n| n != name);
        next.entries.push(name.to_string());
        next.tidy();
        next
    }

    /// Where a rollback from the active release `current` goes, and the history after it.
    /// With `to`, goes back to the newest activation of that release (explicitly asked for,
    /// so its own mark is lifted); without, to the newest entry before `current` that is not
    /// marked. Entries for which `exists` is false (deleted releases) are skipped.
    ///
    /// # Errors
    /// Nothing to roll back to (or `to` is not in the history): a one-line message.
    pub fn rollback(
        &self,
        current: &str,
        to: Option<&str>,
        exists: impl Fn(&str) -> bool,
    ) -> Result<(String, History), String> {
        if to == Some(current) {
            return Err(format!("release {current} is already active"));
        }
        let mut next = self.clone();
        if !next.is_rolled_back(current) {
            next.rolled_back.push(current.to_string());
        }
        while let Some(top) = next.entries.last() {
            let wanted = match to {
                Some(to) => top == to,
                None => top != current && !next.is_rolled_back(top),
            };
            if wanted && exists(top) {
                let target = top.clone();
                next.rolled_back.retain(|n| *n != target);
                next.tidy();
                return Ok((target, next));
            }
            next.entries.pop();
        }
        Err(match to {
            Some(to) => format!(
                "release {to} is not in the activation history ({}) or its directory is gone; \
                 use activate",
                self.describe()
            ),
            None => format!(
                "no earlier release to roll back to (history: {})",
                self.describe()
            ),
        })
    }

    /// Where a rollback from `current` would go now, for `status` (ignores deleted releases).
    pub fn rollback_target(&self, current: &str) -> Option<String> {
        self.rollback(current, None, |_| true).ok().map(|(t, _)| t)
    }

    /// Newest first, marked ones flagged, for messages.
    fn describe(&self) -> String {
        if self.entries.is_empty() {
            return "empty".into();
        }
        let names: Vec<String> = self
            .entries
            .iter()
            .rev()
            .map(|n| {
                if self.is_rolled_back(n) {
                    format!("{n} (rolled back)")
                } else {
                    n.clone()
                }
            })
            .collect();
        names.join(", ")
    }

    fn tidy(&mut self) {
        // Marks outlive their entries (status and list still show which release was rolled
        // back from), so they are bounded on their own.
        let excess = self.entries.len().saturating_sub(MAX_ENTRIES);
        self.entries.drain(..excess);
        let mut seen = std::collections::HashSet::new();
        self.rolled_back.retain(|n| seen.insert(n.clone()));
        let excess = self.rolled_back.len().saturating_sub(MAX_ENTRIES);
        self.rolled_back.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(names: &[&str]) -> History {
        History::new(names.iter().map(|s| s.to_string()).collect(), Vec::new())
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn each_rollback_steps_further_back_and_never_returns() {
        let h1 = h(&["1", "2", "3"]);
        let (t, h2) = h1.rollback("3", None, all).unwrap();
        assert_eq!(t, "2");
        assert_eq!(h2.entries(), ["1", "2"]);
        assert_eq!(
            h2.rolled_back(),
            ["3"],
            "3 stays marked for status and list"
        );
        let (t, h3) = h2.rollback("2", None, all).unwrap();
        assert_eq!(t, "1");
        let err = h3.rollback("1", None, all).unwrap_err();
        assert!(err.contains("no earlier release"), "{err}");
    }

    #[test]
    fn a_release_rolled_back_from_is_skipped_until_activated_again() {
        // 1, 3, 2, 3 activated: rolling back from 3 reaches 2, and from 2 must not reach 3.
        let start = h(&["1", "3", "2", "3"]);
        let (t, after) = start.rollback("3", None, all).unwrap();
        assert_eq!(t, "2");
        assert!(after.is_rolled_back("3"));
        let (t, after) = after.rollback("2", None, all).unwrap();
        assert_eq!(t, "1");
        assert_eq!(after.entries(), ["1"]);
        // Activating 3 again lifts its mark.
        let again = start.rollback("3", None, all).unwrap().1.activated("3");
        assert!(!again.is_rolled_back("3"));
        assert_eq!(again.rollback_target("3").as_deref(), Some("2"));
    }

    #[test]
    fn deleted_releases_are_skipped() {
        let (t, after) = h(&["1", "2", "3"])
            .rollback("3", None, |n| n != "2")
            .unwrap();
        assert_eq!(t, "1");
        assert_eq!(after.entries(), ["1"]);
    }

    #[test]
    fn rollback_to_a_named_release() {
        let start = h(&["1", "2", "3", "4"]);
        let (t, after) = start.rollback("4", Some("2"), all).unwrap();
        assert_eq!(t, "2");
        assert_eq!(after.entries(), ["1", "2"]);
        let err = start.rollback("4", Some("9"), all).unwrap_err();
        assert!(err.contains("not in the activation history"), "{err}");
        let err = start.rollback("4", Some("4"), all).unwrap_err();
        assert!(err.contains("already active"), "{err}");
        // Named explicitly, a marked release is served and its mark lifted.
        let marked = h(&["1", "2", "1"]).rollback("1", None, all).unwrap().1;
        let marked = marked.activated("3");
        assert!(marked.is_rolled_back("1"));
        let (t, after) = marked.rollback("3", Some("1"), all).unwrap();
        assert_eq!(t, "1");
        assert!(!after.is_rolled_back("1"));
    }

    #[test]
    fn old_state_files_and_the_bound() {
        let old = History::from_previous("2", Some("1"));
        assert_eq!(old.entries(), ["1", "2"]);
        assert_eq!(old.rollback_target("2").as_deref(), Some("1"));
        let mut long = History::default();
        for i in 0..(MAX_ENTRIES + 10) {
            long = long.activated(&i.to_string());
        }
        assert_eq!(long.entries().len(), MAX_ENTRIES);
        assert_eq!(long.entries()[0], "10");
        let marks = History::new(vec!["1".into()], vec!["1".into(), "1".into()]);
        assert_eq!(marks.rolled_back(), ["1"]);
    }
}
