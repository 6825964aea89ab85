//! Which processes' CPU a scenario reports, read from `/proc` without a database connection.

use super::Target;
use crate::stats::CpuSnapshot;

/// The processes whose CPU a scenario reports, taken apart from the [`Topology`] so that a
/// snapshot can run on a blocking thread while the load goes on.
#[derive(Clone, Debug)]
pub struct CpuProbe {
    pub(super) target: Target,
    pub(super) gateway_pids: Vec<u32>,
    pub(super) api_pids: Vec<u32>,
    /// Scaled: the bench's database, whose backends are told apart from the rest of Postgres.
    pub(super) database: Option<String>,
}

impl CpuProbe {
    /// The labelled process groups: the tiers; `postgres` = the backends of the bench's own
    /// database (its connections and autovacuum workers) and `postgres-other` = every other
    /// Postgres process (the server-wide writers and checkpointer, and other databases' backends,
    /// busy with whatever else runs on the machine); Redis; the bench. External: the bench only.
    pub fn groups(&self) -> Vec<(String, Vec<u32>)> {
        let mut groups = Vec::new();
        match self.target {
            Target::Scaled => {
                groups.push(("gateway".to_owned(), self.gateway_pids.clone()));
                groups.push(("api".to_owned(), self.api_pids.clone()));
                let all = crate::stats::pids_named("postgres");
                let (ours, others): (Vec<u32>, Vec<u32>) =
                    all.into_iter().partition(|p| self.serves_bench_database(*p));
                groups.push(("postgres".to_owned(), ours));
                groups.push(("postgres-other".to_owned(), others));
                groups.push(("redis".to_owned(), crate::stats::pids_named("redis-server")));
            }
            Target::Standalone => {
                let mut pids = self.gateway_pids.clone();
                pids.extend(self.api_pids.iter().filter(|p| !self.gateway_pids.contains(p)));
                groups.push(("serve".to_owned(), pids));
            }
            Target::External => {}
        }
        groups.push(("bench".to_owned(), vec![std::process::id()]));
        groups
    }

    /// The labels [`Self::groups`] gives, without looking anything up.
    pub fn labels(&self) -> Vec<String> {
        let labels: &[&str] = match self.target {
            Target::Scaled => &["gateway", "api", "postgres", "postgres-other", "redis", "bench"],
            Target::Standalone => &["serve", "bench"],
            Target::External => &["bench"],
        };
        labels.iter().map(|l| (*l).to_owned()).collect()
    }

    /// Whether a Postgres process works for the bench's database: its process title (Postgres
    /// keeps it up to date, `postgres: [cluster: ]user database host(port) state`, or
    /// `autovacuum worker database`) names it. Read from `/proc`, so it needs no connection:
    /// a server at its connection limit is still measured.
    fn serves_bench_database(&self, pid: u32) -> bool {
        let Some(database) = &self.database else {
            return false;
        };
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|title| names_database(&String::from_utf8_lossy(&title), database))
    }

    /// A CPU snapshot of [`Self::groups`], taken on a blocking thread (it reads a few files of
    /// `/proc` per process) so that the sockets and posters of the run are not held up.
    pub async fn snapshot(&self) -> CpuSnapshot {
        let probe = self.clone();
        match tokio::task::spawn_blocking(move || CpuSnapshot::take(&probe.groups())).await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                eprintln!("warning: a CPU snapshot failed: {e}");
                CpuSnapshot::default()
            }
        }
    }
}

/// Whether a Postgres process title names `database` as one of its words.
pub(super) fn names_database(title: &str, database: &str) -> bool {
    title
        .split(|c: char| c.is_whitespace() || c == '\0')
        .any(|word| word == database)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_told_by_their_title() {
        let db = "cc_bench_0a1b2c";
        assert!(names_database(
            "postgres: 15/main: postgres cc_bench_0a1b2c 127.0.0.1(5910) idle   ",
            db
        ));
        assert!(names_database("postgres: autovacuum worker cc_bench_0a1b2c\0", db));
        assert!(!names_database(
            "postgres: 15/main: postgres cc_bench_0a1b2c9 127.0.0.1(5910) idle",
            db
        ));
        assert!(!names_database("postgres: 15/main: walwriter", db));
    }
}
