// What the app and the packet tunnel extension share; both targets compile
// this file. Only Foundation: the app does not link the Hopwire library,
// the extension does.

import Foundation

enum HopwireShared {
    /// Your app group (Signing & Capabilities → App Groups), in both
    /// targets' entitlements. The session's state directory (wallet key,
    /// settings, DHT peers) and the last connect choice live in its
    /// container.
    static let appGroup = "group.net.hopwire.app"
}

/// Keys of the options the app passes to `startVPNTunnel(options:)`
/// (`NSString` and `NSNumber` values). Starts by iOS (on demand, or from
/// Settings) carry none: the extension then connects with the choice it was
/// last started with.
enum StartOption {
    /// ISO country code of the exit; absent: any.
    static let country = "country"
    /// 1 to 3; present in every start by the app.
    static let hops = "hops"
    /// Only nodes that charge at most this per GiB; absent: no cap.
    static let maxPricePerGib = "maxPricePerGib"
}

/// What the app asks the running extension (`sendProviderMessage`), as
/// JSON.
struct ProviderRequest: Codable {
    enum Command: String, Codable {
        /// Answered with a `ProviderStatus`, or nothing when no session runs.
        case status
    }

    var command: Command
}

/// The extension's answer to `.status`, as JSON: the session's status
/// without its settings. (Lockdown and always-on are the VPN
/// configuration's business on iOS: see TunnelController.)
struct ProviderStatus: Codable, Equatable {
    enum State: String, Codable {
        case disconnected, connecting, connected, reconnecting, error
    }

    struct Hop: Codable, Equatable {
        /// Short form of the node's identity key.
        var id: String
        var addr: String
        var region: String
    }

    var state: State
    /// Why the tunnel is in error or reconnecting, or a payment problem.
    var error: String?
    /// Rebuild attempts since the circuit was lost, while reconnecting.
    var attempt: UInt32?
    /// Every hop, first (guard) to last (exit).
    var circuit: [Hop]
    var innerV4: String?
    var innerV6: String?
    /// Why IPv6 is blocked while the tunnel is up; nil: it is carried.
    var ipv6Blocked: String?
    var mtu: UInt16?
    var bytesSent: UInt64
    var bytesReceived: UInt64
    /// Throughput over the last second, bits per second.
    var txBps: UInt64
    var rxBps: UInt64
    var rttMs: Double?
    /// Paid this session, in the ledger's smallest unit.
    var spent: UInt64
}
