/// When a response carries a body, for every protocol that writes one (RFC 9110 sections 6.4.1, 9.3.2).
public enum ResponseBodyRule {
    /// 1xx, 204 and 304 never carry a body, nor a length for one.
    @inlinable
    public static func statusForbidsBody(_ status: Int) -> Bool {
        status < 200 || status == 204 || status == 304
    }

    /// Whether a body goes out: not for the statuses above, and not in the answer to HEAD (whose head still
    /// describes the body a GET would get).
    @inlinable
    public static func sendsBody(status: Int, isHead: Bool) -> Bool {
        !isHead && !statusForbidsBody(status)
    }
}
