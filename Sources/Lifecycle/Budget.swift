/// Why a lifecycle request failed: a short code a program can test and a
/// sentence a person can read.
public struct LifecycleError: Error, Codable, Equatable, Sendable, CustomStringConvertible {
    public var code: String
    public var message: String
    public init(_ code: Code, _ message: String) { self.code = code.rawValue; self.message = message }
    public var description: String { message }

    public enum Code: String, Sendable {
        /// The request is malformed or names something that cannot be.
        case invalid
        /// No such type, instance, definition or attribute.
        case notFound = "not-found"
        /// That UUID is already in use.
        case exists
        /// The budget the type draws from has no room.
        case budget
        /// A client holds the device.
        case busy
        /// The migration state cannot go there.
        case incompatible
        /// The operating system refused (files, sockets, memory).
        case system
    }
}

/// The budgets instances draw from, committed at creation and returned when
/// an instance stops. Kept under the daemon's lock: a create checks and
/// takes its share in one step, so concurrent creates never over-commit.
public struct Budgets: Sendable, Equatable {
    public private(set) var capacity: [Pool: Int]
    public private(set) var used: [Pool: Int] = [:]

    /// The samples' defaults, with `overrides`.
    public init(_ overrides: [Pool: Int] = [:]) {
        capacity = Dictionary(uniqueKeysWithValues: Pool.allCases.map { ($0, overrides[$0] ?? $0.defaultCapacity) })
    }

    public func remaining(_ pool: Pool) -> Int { (capacity[pool] ?? 0) - (used[pool] ?? 0) }

    /// How many more instances of `type` fit (mdev's available_instances).
    public func available(_ type: DeviceType) -> Int { max(0, remaining(type.pool)) / type.cost }

    /// Takes `type`'s share, or fails naming the budget and changes nothing.
    public mutating func commit(_ type: DeviceType) throws(LifecycleError) {
        let left = remaining(type.pool)
        guard left >= type.cost else {
            throw LifecycleError(.budget, "no room for \(type.id): it needs \(type.cost) of the \(type.pool.rawValue) budget's "
                                 + "\(capacity[type.pool] ?? 0) \(type.pool.unit), and \(left) are left")
        }
        used[type.pool, default: 0] += type.cost
    }

    /// Gives `type`'s share back.
    public mutating func release(_ type: DeviceType) {
        used[type.pool] = max(0, (used[type.pool] ?? 0) - type.cost)
    }
}
