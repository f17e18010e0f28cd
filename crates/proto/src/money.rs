//! `google.type.Money` <-> integer minor units of its ISO 4217 currency, the form every service
//! stores money in (DESIGN: no floats for money).

use crate::google::r#type::Money;

/// The number of minor-unit digits of an ISO 4217 currency customers pay in (0 to 9); `None`
/// for an unknown code or one without a minor unit (funds, metals).
pub fn currency_exponent(code: &str) -> Option<u32> {
    iso_currency::Currency::from_code(code)?
        .exponent()
        .map(u32::from)
        .filter(|exponent| *exponent <= 9)
}

/// The amount in minor units, when it is a whole number of them in a known currency and fits.
pub fn to_minor_units(money: &Money) -> Option<i64> {
    let exponent = currency_exponent(&money.currency_code)?;
    let per_minor = 10_i64.pow(9 - exponent);
    if money.nanos.abs() >= 1_000_000_000 || i64::from(money.nanos) % per_minor != 0 {
        return None;
    }
    money
        .units
        .checked_mul(10_i64.pow(exponent))?
        .checked_add(i64::from(money.nanos) / per_minor)
}

/// `minor_units` of `currency` as Money; a currency without a known exponent is taken to have 2.
pub fn from_minor_units(currency: &str, minor_units: i64) -> Money {
    let exponent = currency_exponent(currency).unwrap_or(2);
    let scale = 10_i64.pow(exponent);
    let nanos = (minor_units % scale) * 10_i64.pow(9 - exponent);
    Money {
        currency_code: currency.to_owned(),
        units: minor_units / scale,
        nanos: i32::try_from(nanos).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_round_trip() {
        for (currency, minor) in [("USD", 12_345), ("USD", -250), ("JPY", 1_000), ("BHD", 1_234_567)] {
            let money = from_minor_units(currency, minor);
            assert_eq!(to_minor_units(&money), Some(minor), "{currency} {minor}");
        }
        assert_eq!(from_minor_units("USD", -250).units, -2);
        assert_eq!(from_minor_units("USD", -250).nanos, -500_000_000);
        assert_eq!(
            to_minor_units(&Money {
                currency_code: "XYZ".into(),
                units: 1,
                nanos: 0
            }),
            None
        );
    }
}
