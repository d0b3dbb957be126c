/// Helpers the test targets share.

extension Array where Element == UInt8 {
    /// The bytes a hex string spells, two digits a byte; anything that is
    /// not a hex digit (spaces, line breaks) is skipped. A dangling digit
    /// is a mistake in the test's data.
    public init(hex: some StringProtocol) {
        let digits = hex.filter(\.isHexDigit).compactMap(\.hexDigitValue)
        precondition(digits.count % 2 == 0, "an odd number of hex digits")
        self = stride(from: 0, to: digits.count, by: 2).map { UInt8(digits[$0] << 4 | digits[$0 + 1]) }
    }
}
