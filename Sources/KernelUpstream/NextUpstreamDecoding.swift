import KernelConfig

extension NextUpstreamConditions {
    /// Decodes nginx's `*_next_upstream` value: `[error, timeout, http_503]` or one word; `off` alone turns retries
    /// off. Errors name the value's position.
    public static func decode(_ value: ConfigValue) throws -> NextUpstreamConditions {
        let items = try value.list(allowScalar: true)
        var conditions: NextUpstreamConditions = []
        for item in items {
            let word = try item.nonEmptyString()
            guard let condition = NextUpstreamConditions.words[word] else {
                throw item.expected("one of " + NextUpstreamConditions.words.keys.sorted().joined(separator: ", "))
            }
            if word == "off", items.count > 1 { throw item.error("\"off\" cannot be combined with other values") }
            conditions.formUnion(condition)
        }
        return conditions
    }
}
