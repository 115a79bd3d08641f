//! Per-profile memory footprint: which worst case a profile's tasks are charged.
//!
//! Pure. The declared worst case comes from the config; a learned estimate (an upper
//! confidence bound over observed peaks, never below the largest observed peak plus a margin)
//! is computed from samples by the app layer and passed in. This module only combines the two
//! according to [`FootprintMode`].

use super::types::{Bytes, FootprintMode, WorstCase};

/// The worst case a profile's tasks are charged, given its mode, its declaration and what
/// was learned (if anything yet).
pub fn effective(
    mode: FootprintMode,
    declared: WorstCase,
    learned: Option<WorstCase>,
) -> WorstCase {
    match (mode, learned) {
        (FootprintMode::Declared, _) | (_, None) => declared,
        (FootprintMode::Learned, Some(l)) => l,
        (FootprintMode::Max, Some(l)) => WorstCase {
            kv_bytes: Bytes(declared.kv_bytes.get().max(l.kv_bytes.get())),
            extra_bytes: Bytes(declared.extra_bytes.get().max(l.extra_bytes.get())),
            kv_tokens: declared.kv_tokens.max(l.kv_tokens),
            slots: declared.slots.max(l.slots),
            request_tokens: declared.request_tokens.max(l.request_tokens),
            kv_bytes_per_token: declared.kv_bytes_per_token.max(l.kv_bytes_per_token),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wc(tokens: u64) -> WorstCase {
        WorstCase {
            kv_bytes: Bytes(tokens * 1000),
            extra_bytes: Bytes(0),
            kv_tokens: tokens,
            slots: 1,
            request_tokens: tokens,
            kv_bytes_per_token: 1000,
        }
    }

    #[test]
    fn max_mode_charges_the_larger_of_declared_and_learned() {
        assert_eq!(
            effective(FootprintMode::Max, wc(100), Some(wc(150))),
            wc(150)
        );
        assert_eq!(
            effective(FootprintMode::Max, wc(100), Some(wc(50))),
            wc(100)
        );
    }

    #[test]
    fn learned_mode_uses_the_estimate_once_there_is_one() {
        assert_eq!(
            effective(FootprintMode::Learned, wc(100), Some(wc(50))),
            wc(50)
        );
        assert_eq!(effective(FootprintMode::Learned, wc(100), None), wc(100));
    }

    #[test]
    fn declared_mode_ignores_what_was_learned() {
        assert_eq!(
            effective(FootprintMode::Declared, wc(100), Some(wc(500))),
            wc(100)
        );
    }
}
