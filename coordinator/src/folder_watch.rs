//! A model folder watched while a search writes it (`run --follow`, `submit --follow`). A file
//! matching the pattern is taken once it is complete: not empty, and its size and
//! modification time unchanged over two looks at least 2 s after its last change. Following
//! ends when the search's `trials_summary.json` appears (and every file seen has been
//! taken), or after a given number of models; the caller also ends it on Ctrl-C.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long a file must be unchanged before it is taken.
const SETTLE: Duration = Duration::from_secs(2);

/// How often callers look.
pub const EVERY: Duration = Duration::from_secs(1);

/// The folder and what has been seen and taken of it.
pub struct FolderWatch {
    dir: PathBuf,
    pattern: glob::Pattern,
    count: Option<usize>,
    looked: HashMap<PathBuf, (u64, SystemTime)>,
    taken: HashSet<PathBuf>,
}

/// What one look found.
pub struct Look {
    /// Files complete since the last look, in name order (canonical paths).
    pub ready: Vec<PathBuf>,
    /// Why following ends, once it does.
    pub end: Option<String>,
}

impl FolderWatch {
    /// Watches `dir` for files matching `pattern`, taking at most `count`.
    pub fn new(dir: &Path, pattern: &str, count: Option<usize>) -> anyhow::Result<FolderWatch> {
        let pattern = glob::Pattern::new(pattern)
            .map_err(|e| anyhow::anyhow!("--pattern `{pattern}`: {}", e.msg))?;
        Ok(FolderWatch {
            dir: dir.to_owned(),
            pattern,
            count,
            looked: HashMap::new(),
            taken: HashSet::new(),
        })
    }

    /// The folder watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Files taken so far.
    pub fn taken(&self) -> usize {
        self.taken.len()
    }

    /// Looks once: takes the files that are complete now.
    pub fn look(&mut self) -> anyhow::Result<Look> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", self.dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .is_some_and(|n| self.pattern.matches(&n.to_string_lossy()))
            })
            .collect();
        entries.sort();
        let mut ready = Vec::new();
        let mut pending = 0usize;
        for path in entries {
            if self.taken.contains(&path) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let now = (
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            );
            let settled = now.1.elapsed().is_ok_and(|age| age >= SETTLE);
            if now.0 > 0 && settled && self.looked.get(&path) == Some(&now) {
                if self.count.is_some_and(|n| self.taken.len() >= n) {
                    break;
                }
                self.taken.insert(path.clone());
                ready.push(path.canonicalize().unwrap_or(path));
            } else {
                self.looked.insert(path, now);
                pending += 1;
            }
        }
        let end = if let Some(n) = self.count
            && self.taken.len() >= n
        {
            Some(format!("{n} models taken (--follow-count)"))
        } else if pending == 0 && self.dir.join("trials_summary.json").is_file() {
            Some("the search wrote trials_summary.json".to_owned())
        } else {
            None
        };
        Ok(Look { ready, end })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_file_is_taken_once_it_has_settled_and_following_ends_on_the_summary() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        let settled = dir.path().join("model_trial_1.h5");
        std::fs::write(&settled, b"weights").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&settled)
            .unwrap()
            .set_modified(old)
            .unwrap();
        // Still being written: changed just now.
        std::fs::write(dir.path().join("model_trial_2.h5"), b"half").unwrap();
        // Empty files and other names are never taken.
        std::fs::write(dir.path().join("model_trial_3.h5"), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let mut watch = FolderWatch::new(dir.path(), "*.h5", None).unwrap();
        // The first look only notes what is there.
        let first = watch.look().unwrap();
        assert!(first.ready.is_empty() && first.end.is_none());
        let second = watch.look().unwrap();
        assert_eq!(second.ready.len(), 1);
        assert!(second.ready[0].ends_with("model_trial_1.h5"));
        // The summary ends it only once nothing is pending.
        std::fs::write(dir.path().join("trials_summary.json"), b"[]").unwrap();
        assert!(watch.look().unwrap().end.is_none());
        assert_eq!(watch.taken(), 1);
    }

    #[test]
    fn following_ends_after_the_given_count() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        for i in 0..3 {
            let path = dir.path().join(format!("m{i}.onnx"));
            std::fs::write(&path, b"graph").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let mut watch = FolderWatch::new(dir.path(), "*.onnx", Some(2)).unwrap();
        watch.look().unwrap();
        let look = watch.look().unwrap();
        assert_eq!(look.ready.len(), 2);
        assert_eq!(look.end.as_deref(), Some("2 models taken (--follow-count)"));
    }
}
