//! What a node registers and what every node sees of the cluster.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The part a node plays in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts jobs and dispatches them; one of them is the master.
    JobTracker,
    /// Runs jobs of its node group.
    TaskTracker,
    /// Submits jobs and receives their feedback.
    JobClient,
}

impl Role {
    /// The znode directory of this role under the cluster's base path.
    pub fn dir(self) -> &'static str {
        match self {
            Role::JobTracker => "jobtrackers",
            Role::TaskTracker => "tasktrackers",
            Role::JobClient => "jobclients",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::JobTracker => "jobtracker",
            Role::TaskTracker => "tasktracker",
            Role::JobClient => "jobclient",
        })
    }
}

/// One registered node: the data of its ephemeral znode, as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its role.
    pub role: Role,
    /// Its node group (a JobClient's submit node group); `""` for
    /// JobTrackers.
    pub node_group: String,
    /// Its identity, unique in the cluster.
    pub identity: String,
    /// The address it serves others at; `""` when it serves nothing.
    pub address: String,
    /// How many jobs it runs at once (TaskTrackers); 0 otherwise.
    pub slots: u32,
    /// The version of the program.
    pub version: String,
    /// When it started, in Unix milliseconds.
    pub started_at_ms: i64,
}

impl NodeInfo {
    /// The znode path of this node relative to the cluster's base path.
    pub(crate) fn relative_path(&self) -> String {
        match self.role {
            Role::JobTracker => format!("{}/{}", self.role.dir(), self.identity),
            Role::TaskTracker | Role::JobClient => {
                format!("{}/{}/{}", self.role.dir(), self.node_group, self.identity)
            }
        }
    }
}

/// Every registered node of the cluster and the elected master.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClusterView {
    /// The nodes, ordered by role, node group and identity.
    pub nodes: Vec<NodeInfo>,
    /// The identity of the JobTracker that leads, if any.
    pub master: Option<String>,
}

impl ClusterView {
    /// The registered JobTrackers.
    pub fn job_trackers(&self) -> Vec<&NodeInfo> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::JobTracker)
            .collect()
    }

    /// How many TaskTrackers each node group has.
    pub fn task_tracker_groups(&self) -> BTreeMap<String, usize> {
        let mut groups = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.role == Role::TaskTracker) {
            *groups.entry(node.node_group.clone()).or_insert(0) += 1;
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(role: Role, group: &str, identity: &str) -> NodeInfo {
        NodeInfo {
            role,
            node_group: group.into(),
            identity: identity.into(),
            address: String::new(),
            slots: 0,
            version: "0.1.0".into(),
            started_at_ms: 1,
        }
    }

    #[test]
    fn roles_are_written_as_their_directory_names_say() {
        let json = serde_json::to_string(&node(Role::TaskTracker, "g", "t1")).unwrap();
        assert!(json.contains(r#""role":"tasktracker""#), "{json}");
        let back: NodeInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(back.role, Role::TaskTracker);
        assert_eq!(
            node(Role::JobTracker, "", "a").relative_path(),
            "jobtrackers/a"
        );
        assert_eq!(
            node(Role::JobClient, "submit", "c").relative_path(),
            "jobclients/submit/c"
        );
    }

    #[test]
    fn the_view_counts_task_trackers_by_group() {
        let view = ClusterView {
            nodes: vec![
                node(Role::JobTracker, "", "jt"),
                node(Role::TaskTracker, "a", "t1"),
                node(Role::TaskTracker, "a", "t2"),
                node(Role::TaskTracker, "b", "t3"),
                node(Role::JobClient, "a", "c"),
            ],
            master: Some("jt".into()),
        };
        assert_eq!(view.job_trackers().len(), 1);
        let groups = view.task_tracker_groups();
        assert_eq!(groups.get("a"), Some(&2));
        assert_eq!(groups.get("b"), Some(&1));
        assert_eq!(groups.len(), 2);
    }
}
