//! What Postern makes of a router's replies: sentences split into words and replies
//! (`routeros::message`), the typed helpers' items (`routeros::api`), and the router's
//! clock as the orchestrator reads it for self-expiry entries. A reply that parses writes
//! back to a sentence that parses to the same reply.
#![no_main]

use chrono::{DateTime, TimeDelta, Utc};
use libfuzzer_sys::fuzz_target;
use routeros::api::{active, group, nat, scheduler, system, user};
use routeros::codec::Decoder;
use routeros::{Item, Reply, ReplyKind, Words};

const DECODER: Decoder = Decoder {
    max_word_len: 4096,
    max_words: 256,
};

fuzz_target!(|data: &[u8]| {
    for sentence in postern_fuzz::sentences(data, DECODER) {
        let words = Words::parse(&sentence);
        assert_eq!(
            words.head.as_ref(),
            sentence.first().unwrap_or_default(),
            "the head is the first word"
        );
        let Ok(reply) = Reply::parse(&sentence) else {
            continue;
        };
        let back = Reply::parse(&reply.to_sentence()).expect("a written reply parses");
        assert_eq!(back, reply, "a reply survives being written and read");
        let _ = (reply.message(), reply.category(), reply.ret());
        if reply.kind != ReplyKind::Re {
            continue;
        }

        let item = Item::new(reply.attributes.clone());
        let _ = (item.get_bool("disabled"), item.get_u64("run-count"));
        let _ = (item.get_list("address"), item.to_map(), item.id());
        let _ = user::User::from_item(item.clone());
        let _ = group::Group::from_item(item.clone());
        let _ = active::ActiveUser::from_item(item.clone());
        let _ = nat::NatRule::from_item(item.clone());
        let _ = scheduler::Schedule::from_item(item.clone());
        let _ = system::Resource::from_item(item.clone());
        let mode = system::DeviceMode::from_item(&item);
        let _ = mode.flag("scheduler");

        // `/system/clock/print`: the self-expiry entry's start in the router's clock, for
        // a grant ending up to a day from now. Whatever the router says, either no entry
        // or one whose date and time the router can read back.
        if let Some((local, v7)) = orchestrator::handlers::parse_router_clock(&item) {
            let now: DateTime<Utc> = DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default();
            let offset = local - now.naive_utc();
            for ahead in [0, 1, 3600, 86_400] {
                let expires_at = now + TimeDelta::seconds(ahead);
                if let Some((date, time)) =
                    orchestrator::handlers::schedule_start(expires_at, offset, v7)
                {
                    assert!(!date.is_empty() && time.len() == 8, "{date} {time}");
                }
            }
        }
    }
});
