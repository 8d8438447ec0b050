//! Noticing that the schedule files changed, so the daemon re-reads them without a SIGHUP.
//!
//! Polled, not inotify: a stat of each `*.toml` in the folder every [`POLL`] (a thousand files
//! cost about a millisecond), which sees every way an editor or a deploy tool saves a file
//! (in place, rename over, a new inode) and needs no kernel watch limits. Debounced: a change is
//! acted on only once the folder looked the same at two polls in a row, so a file still being
//! written is not read half-saved — and if it was (a writer slower than the poll), its size or
//! time changes again and it is read again. The store skips files whose content it already has,
//! so a reload that finds nothing new changes nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Real time between looks at the folder (transport time: it does not follow a rehearsal clock).
pub const POLL: Duration = Duration::from_secs(1);

/// After a reload failed (the store or the folder could not be read), how long before the
/// watcher tries it again.
pub const RETRY: Duration = Duration::from_secs(30);

/// What the folder looked like: each schedule file's name, size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Fingerprint {
    /// Looks at the folder now. A folder that cannot be listed looks empty (the reload that
    /// follows reports why, and keeps the schedules in force).
    pub fn of(dir: &Path) -> Fingerprint {
        let Ok((_, paths)) = crate::schedule::list_dir(dir) else {
            return Fingerprint::default();
        };
        Fingerprint(
            paths
                .into_iter()
                .map(|path| {
                    let meta = std::fs::metadata(&path).ok();
                    let size = meta.as_ref().map_or(0, |m| m.len());
                    let modified = meta.and_then(|m| m.modified().ok());
                    (path, size, modified)
                })
                .collect(),
        )
    }
}

/// The watcher's memory between polls.
#[derive(Debug)]
pub struct Watch {
    /// The folder as it was when the schedules in force were last read.
    applied: Fingerprint,
    /// The folder at the previous poll.
    previous: Fingerprint,
    /// After a failed reload: no new try before this.
    quiet_until: Option<std::time::Instant>,
}

impl Watch {
    /// Starts from the folder as it was just before the schedules were read.
    pub fn new(applied: Fingerprint) -> Watch {
        Watch {
            previous: applied.clone(),
            applied,
            quiet_until: None,
        }
    }

    /// Records a poll; true when the folder has changed since it was last read and has stayed
    /// the same since the previous poll (the change looks finished): time to reload.
    pub fn poll(&mut self, now: Fingerprint) -> bool {
        let settled = now == self.previous;
        self.previous = now;
        if self
            .quiet_until
            .is_some_and(|until| std::time::Instant::now() < until)
        {
            return false;
        }
        settled && self.previous != self.applied
    }

    /// A reload failed: the folder still counts as unread, and the watcher tries again after
    /// [`RETRY`] (sooner would only repeat the same error every second).
    pub fn failed(&mut self) {
        self.quiet_until = Some(std::time::Instant::now() + RETRY);
    }

    /// The schedules were just read (by this watcher or a SIGHUP) from the folder as `seen`,
    /// taken before reading, so a change made during the read is still noticed.
    pub fn reloaded(&mut self, seen: Fingerprint) {
        self.applied = seen;
        self.quiet_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_change_is_acted_on_once_it_has_settled_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a.toml"), "one");
        let mut watch = Watch::new(Fingerprint::of(dir.path()));
        assert!(!watch.poll(Fingerprint::of(dir.path())), "nothing changed");

        write(&dir.path().join("a.toml"), "one two");
        assert!(
            !watch.poll(Fingerprint::of(dir.path())),
            "a change just seen may be half-saved"
        );
        let settled = Fingerprint::of(dir.path());
        assert!(watch.poll(settled.clone()), "the same at two polls: reload");
        watch.reloaded(settled);
        assert!(!watch.poll(Fingerprint::of(dir.path())), "already read");
    }

    #[test]
    fn new_removed_and_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = Watch::new(Fingerprint::of(dir.path()));
        write(&dir.path().join(".#a.toml"), "an editor's lock file");
        write(&dir.path().join("notes.txt"), "not a schedule");
        assert!(!watch.poll(Fingerprint::of(dir.path())));
        assert!(
            !watch.poll(Fingerprint::of(dir.path())),
            "hidden and non-toml files are not schedules"
        );

        write(&dir.path().join("b.toml"), "new");
        watch.poll(Fingerprint::of(dir.path()));
        let seen = Fingerprint::of(dir.path());
        assert!(watch.poll(seen.clone()), "a new file");
        watch.reloaded(seen);

        std::fs::remove_file(dir.path().join("b.toml")).unwrap();
        watch.poll(Fingerprint::of(dir.path()));
        assert!(watch.poll(Fingerprint::of(dir.path())), "a removed file");
    }

    #[test]
    fn a_failed_reload_is_tried_again_later_not_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = Watch::new(Fingerprint::of(dir.path()));
        write(&dir.path().join("a.toml"), "state = \"cancelled\"");
        watch.poll(Fingerprint::of(dir.path()));
        assert!(watch.poll(Fingerprint::of(dir.path())));
        watch.failed();
        assert!(
            !watch.poll(Fingerprint::of(dir.path())),
            "quiet for a while after a failure"
        );
        watch.quiet_until = Some(std::time::Instant::now());
        assert!(
            watch.poll(Fingerprint::of(dir.path())),
            "the change still counts as unread"
        );
    }

    #[test]
    fn a_change_during_a_reload_is_noticed_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a.toml"), "one");
        let mut watch = Watch::new(Fingerprint::of(dir.path()));
        // A SIGHUP reload takes its fingerprint, then the file changes while it reads.
        let before_read = Fingerprint::of(dir.path());
        write(&dir.path().join("a.toml"), "one, then more");
        watch.reloaded(before_read);
        watch.poll(Fingerprint::of(dir.path()));
        assert!(watch.poll(Fingerprint::of(dir.path())));
    }
}
