//! A handler whose start code (a static constructor, run when the component is instantiated,
//! before any `handle`) waits forever on a WASI clock, where no epoch interrupt reaches it.

use handler_sdk::{HandlerError, KafkaRecord};

/// Blocks on a timer that never fires.
extern "C" fn block_forever() {
    wasip2::clocks::monotonic_clock::subscribe_duration(u64::MAX).block();
}

/// A constructor: the component's `_initialize` runs `.init_array` before the first export call.
#[used]
#[unsafe(link_section = ".init_array")]
static BLOCK_AT_START: extern "C" fn() = block_forever;

struct BlocksAtStart;

impl handler_sdk::Guest for BlocksAtStart {
    fn handle(_record: &KafkaRecord) -> Result<(), HandlerError> {
        Ok(())
    }
}

handler_sdk::export!(BlocksAtStart);
