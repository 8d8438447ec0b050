//! The magic bill numbers: like test cards, they choose what the sandbox does with a charge.
//!
//! A bill number's *base* is the part before its first `.`. A base that starts with `999` is
//! magic, and its last three digits pick a [`Behaviour`] for every charge against that
//! agreement. `999` itself is chaos: the behaviour is chosen per order number by a stable hash,
//! so the same order number always gets the same behaviour. Any other base, and a magic base
//! whose last three digits are not in the table, behaves normally (approve).
//!
//! The `55x` codes make the gateway's books (resultbydate) disagree with what the other services
//! said, one mismatch each, for the daily books comparison.
//!
//! Magic Token Pay tokens (`999…`) use the same table by their last three digits, plus a few of
//! their own handled in `service/tokenpay.rs`: `115` (CVC required) and the decline-type faults
//! `117` (firstcode 17, nothing applied), `217` (the payment applied, Approved, the fault
//! answered anyway) and `317` (applied In Process, then Approved; the fault answered).

/// What the sandbox does with one charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// `000` and every ordinary bill number: AS000, Approved.
    Approve,
    /// `102`, `105`, `101`, `104`, `110`, `400`: the order is Declined with this response code.
    Decline(DeclineCode),
    /// `300` / `301`: AS300 In Process; the first `settle_after` status queries still say In
    /// Process, then the order settles as Approved (`300`) or Declined with AS100 (`301`).
    InProcess { then_approved: bool },
    /// `408`: applied (Approved), but the reply waits `hang` first.
    Hang,
    /// `409`: applied (Approved), then the connection is closed with no response.
    DropConnection,
    /// `500`: applied (Approved), then HTTP 500 with an HTML body.
    ServerError,
    /// `503`: HTTP 503, nothing applied.
    Unavailable,
    /// `429`: HTTP 429, nothing applied.
    TooManyRequests,
    /// `666`: applied (Approved), then a truncated HTML page with HTTP 200.
    Garbage,
    /// `777`: applied (Approved), but every status reply (orderstate, orderresult) for the order
    /// has a wrong checkvalue; the books (resultbydate) show it right.
    WrongCheckvalue,
    /// `551`: the first charge against the agreement is applied (Approved), its connection is
    /// dropped and the status services never find it (the books do); later charges approve.
    FirstHidden,
    /// `552`: applied (Approved in the book and the books), but rp.cfm and the status services
    /// say In Process (AS300) for ever.
    StuckInProcess,
    /// `553`: approved, but the books (resultbydate) show the amount 1.00 higher.
    BooksAmount,
    /// `554`: approved, and the gateway files a second approved order `<OrderNumber>-E` beside
    /// it, which only the books show.
    ExtraOrder,
    /// `555`: approved, but the books leave the order out.
    BooksMissing,
    /// `556`: approved, but the books show it Declined.
    BooksDeclined,
    /// `557`: approved, but the books give the order a wrong checkvalue.
    BooksWrongCheckvalue,
    /// `888`: applied (Approved), but replies name the order number with `-X` appended.
    OtherOrderNumber,
    /// `887`: applied (Approved), but only the rp.cfm reply names another order number (`-X`
    /// appended); status replies are right.
    ChargeReplyMismatch,
    /// `998`: applied (Approved in the book), but the rp.cfm reply says AS998, In Process.
    SystemError,
}

/// The response codes of the plain declines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeclineCode {
    /// AS101: card invalid (hard).
    CardInvalid,
    /// AS102: insufficient funds (soft).
    InsufficientFunds,
    /// AS104: card expired (hard).
    CardExpired,
    /// AS105: card limit exceeded (soft).
    CardLimit,
    /// AS110: 3-D Secure required.
    ThreeDsRequired,
    /// AS400: no such payment.
    NoSuchPayment,
}

impl DeclineCode {
    /// The `responsecode` Assist puts on the order.
    pub fn response_code(self) -> &'static str {
        match self {
            DeclineCode::CardInvalid => "AS101",
            DeclineCode::InsufficientFunds => "AS102",
            DeclineCode::CardExpired => "AS104",
            DeclineCode::CardLimit => "AS105",
            DeclineCode::ThreeDsRequired => "AS110",
            DeclineCode::NoSuchPayment => "AS400",
        }
    }

    /// The `message` that goes with it.
    pub fn message(self) -> &'static str {
        match self {
            DeclineCode::CardInvalid => "Declined: card invalid",
            DeclineCode::InsufficientFunds => "Declined: insufficient funds",
            DeclineCode::CardExpired => "Declined: card expired",
            DeclineCode::CardLimit => "Declined: card operation limit exceeded",
            DeclineCode::ThreeDsRequired => "3-D Secure authorization required",
            DeclineCode::NoSuchPayment => "No payment with such parameters exists",
        }
    }
}

/// What a bill number asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillBehaviour {
    /// Every charge does this.
    Fixed(Behaviour),
    /// `999`: chosen per order number by [`chaos`].
    Chaos,
}

impl BillBehaviour {
    /// The behaviour of one charge with this order number.
    pub fn for_order(self, order_number: &str) -> Behaviour {
        match self {
            BillBehaviour::Fixed(behaviour) => behaviour,
            BillBehaviour::Chaos => chaos(order_number),
        }
    }
}

/// The base of a bill number: the part before the first `.` (`511.3` → `511`).
pub fn bill_base(bill_number: &str) -> &str {
    bill_number
        .split_once('.')
        .map_or(bill_number, |(base, _)| base)
}

/// What charges against this bill number (base or extended form) do.
pub fn of_bill(bill_number: &str) -> BillBehaviour {
    let base = bill_base(bill_number);
    if !base.starts_with("999") {
        return BillBehaviour::Fixed(Behaviour::Approve);
    }
    // The base starts with three ASCII bytes, so slicing the last three bytes is on a char
    // boundary only if they are ASCII too; `get` returns None otherwise.
    let last3 = base.get(base.len() - 3..).unwrap_or("");
    let behaviour = match last3 {
        "999" => return BillBehaviour::Chaos,
        "102" => Behaviour::Decline(DeclineCode::InsufficientFunds),
        "105" => Behaviour::Decline(DeclineCode::CardLimit),
        "101" => Behaviour::Decline(DeclineCode::CardInvalid),
        "104" => Behaviour::Decline(DeclineCode::CardExpired),
        "110" => Behaviour::Decline(DeclineCode::ThreeDsRequired),
        "400" => Behaviour::Decline(DeclineCode::NoSuchPayment),
        "300" => Behaviour::InProcess {
            then_approved: true,
        },
        "301" => Behaviour::InProcess {
            then_approved: false,
        },
        "408" => Behaviour::Hang,
        "409" => Behaviour::DropConnection,
        "500" => Behaviour::ServerError,
        "503" => Behaviour::Unavailable,
        "429" => Behaviour::TooManyRequests,
        "666" => Behaviour::Garbage,
        "777" => Behaviour::WrongCheckvalue,
        "551" => Behaviour::FirstHidden,
        "552" => Behaviour::StuckInProcess,
        "553" => Behaviour::BooksAmount,
        "554" => Behaviour::ExtraOrder,
        "555" => Behaviour::BooksMissing,
        "556" => Behaviour::BooksDeclined,
        "557" => Behaviour::BooksWrongCheckvalue,
        "888" => Behaviour::OtherOrderNumber,
        "887" => Behaviour::ChargeReplyMismatch,
        "998" => Behaviour::SystemError,
        // "000" and any suffix the table does not know.
        _ => Behaviour::Approve,
    };
    BillBehaviour::Fixed(behaviour)
}

/// The chaos table: (percent, behaviour), in the spec's order; the percentages add up to 100.
const CHAOS: [(u64, Behaviour); 11] = [
    (60, Behaviour::Approve),
    (12, Behaviour::Decline(DeclineCode::InsufficientFunds)),
    (3, Behaviour::Decline(DeclineCode::CardInvalid)),
    (
        6,
        Behaviour::InProcess {
            then_approved: true,
        },
    ),
    (4, Behaviour::Hang),
    (4, Behaviour::DropConnection),
    (3, Behaviour::ServerError),
    (3, Behaviour::Unavailable),
    (2, Behaviour::Garbage),
    (1, Behaviour::WrongCheckvalue),
    (2, Behaviour::SystemError),
];

/// The chaos behaviour of an order number: 64-bit FNV-1a of its bytes, modulo 100, placed in
/// the cumulative percentages of the table. No randomness: the same number, the same behaviour.
pub fn chaos(order_number: &str) -> Behaviour {
    let mut slot = fnv1a64(order_number.as_bytes()) % 100;
    for (percent, behaviour) in CHAOS {
        if slot < percent {
            return behaviour;
        }
        slot -= percent;
    }
    // Unreachable while the table adds up to 100 (a unit test checks it).
    Behaviour::Approve
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_table_adds_up_to_100() {
        assert_eq!(CHAOS.iter().map(|(p, _)| p).sum::<u64>(), 100);
    }

    #[test]
    fn fnv1a64_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn bases_and_magic() {
        assert_eq!(bill_base("511.3"), "511");
        assert_eq!(bill_base("511"), "511");
        assert_eq!(of_bill("5111111"), BillBehaviour::Fixed(Behaviour::Approve));
        assert_eq!(
            of_bill("9990000102.4"),
            BillBehaviour::Fixed(Behaviour::Decline(DeclineCode::InsufficientFunds))
        );
        assert_eq!(of_bill("999"), BillBehaviour::Chaos);
        assert_eq!(of_bill("999123"), BillBehaviour::Fixed(Behaviour::Approve));
        assert_eq!(of_bill("999é"), BillBehaviour::Fixed(Behaviour::Approve));
        // Only the base counts: the extension is not the behaviour.
        assert_eq!(
            of_bill("1000.999"),
            BillBehaviour::Fixed(Behaviour::Approve)
        );
    }
}
