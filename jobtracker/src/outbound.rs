//! What the tracker sends to its peers (TaskTrackers and JobClients):
//! messages bounded by encoded bytes as well as by count.
//!
//! A message is built whole in memory and must fit the gRPC message limit
//! ([`MAX_MESSAGE_BYTES`](lts_common::limits::MAX_MESSAGE_BYTES)). Jobs
//! carry payloads of up to 1 MiB, so a count alone does not bound a
//! message: 100 assignments of such jobs are 100 MiB. Every message that
//! carries a list of items (assignments, feedback items, job pages) is
//! therefore cut by [`split_by_bytes`] or built up to [`MESSAGE_BUDGET_BYTES`].

/// Most encoded bytes of the items of one outbound message, unless a
/// single item is larger (it then goes alone).
///
/// Well under the 64 MiB limit, and under 4 MiB: that is gRPC's usual
/// default receive limit, so a peer written in another language that
/// never raised its limit still reads every message.
pub const MESSAGE_BUDGET_BYTES: usize = 3 * 1024 * 1024;

/// Bytes `item` adds to a message as one entry of a repeated field: the
/// item, its length prefix and its field tag.
pub fn entry_len<T: prost::Message>(item: &T) -> usize {
    let len = item.encoded_len();
    len + prost::length_delimiter_len(len) + 1
}

/// Cuts `items` into groups, in order, each of at most `max_items` items
/// and at most `budget` encoded bytes (an item larger than `budget` forms a
/// group of its own).
pub fn split_by_bytes<T: prost::Message>(
    items: Vec<T>,
    budget: usize,
    max_items: usize,
) -> Vec<Vec<T>> {
    let max_items = max_items.max(1);
    let mut groups = Vec::new();
    let mut group: Vec<T> = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let len = entry_len(&item);
        if !group.is_empty() && (bytes + len > budget || group.len() >= max_items) {
            groups.push(std::mem::take(&mut group));
            bytes = 0;
        }
        bytes += len;
        group.push(item);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use lts_proto::v1 as pb;

    fn item(id: &str, payload: usize) -> pb::Assignment {
        pb::Assignment {
            job: Some(pb::Job {
                job_id: id.into(),
                spec: Some(pb::JobSpec {
                    payload: vec![7; payload],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            attempt: 1,
            not_before_unix_ms: 0,
        }
    }

    #[test]
    fn groups_stay_within_the_budget_and_keep_the_order() {
        let items: Vec<pb::Assignment> = (0..10).map(|i| item(&i.to_string(), 1000)).collect();
        let one = entry_len(&items[0]);
        let groups = split_by_bytes(items, one * 3, 100);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        let ids: Vec<String> = groups
            .iter()
            .flatten()
            .map(|a| a.job.as_ref().map(|j| j.job_id.clone()).unwrap_or_default())
            .collect();
        assert_eq!(ids, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        for g in &groups {
            let msg = pb::Assignments {
                assignments: g.clone(),
            };
            assert!(prost::Message::encoded_len(&msg) <= one * 3);
        }
    }

    #[test]
    fn counts_bound_groups_and_oversized_items_go_alone() {
        let items: Vec<pb::Assignment> = (0..5).map(|i| item(&i.to_string(), 10)).collect();
        assert_eq!(split_by_bytes(items, usize::MAX, 2).len(), 3);
        let items = vec![item("a", 10), item("big", 5000), item("b", 10)];
        let groups = split_by_bytes(items, 1000, 100);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(split_by_bytes(Vec::<pb::Assignment>::new(), 10, 10).is_empty());
    }
}
