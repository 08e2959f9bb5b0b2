package dev.tfcnn.classifier

/** Malformed JSON, with the line and column where reading stopped. */
class JsonException(message: String) : RuntimeException(message)

/**
 * A small, strict JSON reader (RFC 8259) so the classifier needs no library on Android or the JVM.
 *
 * Objects become [LinkedHashMap] (key order kept), arrays [List], strings [String], numbers [Long]
 * when written without fraction or exponent and in range, otherwise [Double]; true/false/null
 * become [Boolean] and null.
 */
object Json {
    fun parse(text: String): Any? {
        val p = Reader(text)
        p.skipWhitespace()
        val value = p.value(0)
        p.skipWhitespace()
        if (p.pos != text.length) throw p.error("unexpected '${text[p.pos]}' after the JSON value")
        return value
    }

    private const val MAX_DEPTH = 512

    private class Reader(val s: String) {
        var pos = 0

        fun error(message: String): JsonException {
            var line = 1
            var col = 1
            val end = if (pos < s.length) pos else s.length
            for (i in 0 until end) {
                if (s[i] == '\n') {
                    line++
                    col = 1
                } else {
                    col++
                }
            }
            return JsonException("invalid JSON at line $line column $col: $message")
        }

        fun peek(): Char = if (pos < s.length) s[pos] else '\u0000'

        fun skipWhitespace() {
            while (pos < s.length) {
                val c = s[pos]
                if (c == ' ' || c == '\n' || c == '\r' || c == '\t') pos++ else return
            }
        }

        fun expect(c: Char) {
            if (peek() != c) throw error(if (pos >= s.length) "unexpected end, expected '$c'" else "expected '$c' but found '${s[pos]}'")
            pos++
        }

        fun value(depth: Int): Any? {
            if (depth > MAX_DEPTH) throw error("nested deeper than $MAX_DEPTH levels")
            if (pos >= s.length) throw error("unexpected end of input")
            val c = s[pos]
            return when {
                c == '{' -> obj(depth)
                c == '[' -> array(depth)
                c == '"' -> string()
                c == '-' || c in '0'..'9' -> number()
                s.startsWith("true", pos) -> literal(4, true)
                s.startsWith("false", pos) -> literal(5, false)
                s.startsWith("null", pos) -> literal(4, null)
                else -> throw error("unexpected character '$c'")
            }
        }

        fun literal(length: Int, value: Any?): Any? {
            pos += length
            return value
        }

        fun obj(depth: Int): Map<String, Any?> {
            expect('{')
            val map = LinkedHashMap<String, Any?>()
            skipWhitespace()
            if (peek() == '}') {
                pos++
                return map
            }
            while (true) {
                skipWhitespace()
                if (peek() != '"') throw error("expected a string key")
                val key = string()
                skipWhitespace()
                expect(':')
                skipWhitespace()
                map[key] = value(depth + 1)
                skipWhitespace()
                when (peek()) {
                    ',' -> pos++
                    '}' -> {
                        pos++
                        return map
                    }
                    else -> throw error("expected ',' or '}' in an object")
                }
            }
        }

        fun array(depth: Int): List<Any?> {
            expect('[')
            val list = ArrayList<Any?>()
            skipWhitespace()
            if (peek() == ']') {
                pos++
                return list
            }
            while (true) {
                skipWhitespace()
                list.add(value(depth + 1))
                skipWhitespace()
                when (peek()) {
                    ',' -> pos++
                    ']' -> {
                        pos++
                        return list
                    }
                    else -> throw error("expected ',' or ']' in an array")
                }
            }
        }

        fun string(): String {
            expect('"')
            val sb = StringBuilder()
            while (true) {
                if (pos >= s.length) throw error("unterminated string")
                val c = s[pos++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> escape(sb)
                    c < ' ' -> {
                        pos--
                        throw error("control character inside a string (escape it)")
                    }
                    else -> sb.append(c)
                }
            }
        }

        fun escape(sb: StringBuilder) {
            if (pos >= s.length) throw error("unterminated escape")
            when (val e = s[pos++]) {
                '"' -> sb.append('"')
                '\\' -> sb.append('\\')
                '/' -> sb.append('/')
                'b' -> sb.append('\b')
                'f' -> sb.append('\u000C')
                'n' -> sb.append('\n')
                'r' -> sb.append('\r')
                't' -> sb.append('\t')
                'u' -> {
                    if (pos + 4 > s.length) throw error("\\u needs four hex digits")
                    var code = 0
                    for (i in 0 until 4) {
                        val d = Character.digit(s[pos + i], 16)
                        if (d < 0) throw error("\\u needs four hex digits")
                        code = code * 16 + d
                    }
                    pos += 4
                    sb.append(code.toChar()) // surrogate pairs arrive as two escapes, as in UTF-16
                }
                else -> {
                    pos--
                    throw error("invalid escape '\\$e'")
                }
            }
        }

        fun digits(): Int {
            val start = pos
            while (peek() in '0'..'9') pos++
            return pos - start
        }

        fun number(): Any {
            val start = pos
            if (peek() == '-') pos++
            when {
                peek() == '0' -> pos++
                peek() in '1'..'9' -> digits()
                else -> throw error("invalid number")
            }
            var integral = true
            if (peek() == '.') {
                integral = false
                pos++
                if (digits() == 0) throw error("a digit must follow '.'")
            }
            if (peek() == 'e' || peek() == 'E') {
                integral = false
                pos++
                if (peek() == '+' || peek() == '-') pos++
                if (digits() == 0) throw error("the exponent needs digits")
            }
            val text = s.substring(start, pos)
            if (integral) {
                val asLong = text.toLongOrNull()
                if (asLong != null) return asLong
            }
            return text.toDouble()
        }
    }
}

/** A JSON value together with its dotted path, so every error names the contract field. */
class JsonNode(val value: Any?, val path: String, val present: Boolean = true, val source: String = "contract.json") {

    val isNull: Boolean get() = value == null

    private fun fail(what: String): Nothing {
        if (!present) throw ContractException("$source: $path is missing")
        throw ContractException("$source: $path must be $what, got ${describe(value)}")
    }

    operator fun get(key: String): JsonNode {
        val child = if (path.length == 0) key else "$path.$key"
        val map = value as? Map<*, *> ?: if (!present || value == null) return JsonNode(null, child, false, source) else fail("an object")
        return if (map.containsKey(key)) JsonNode(map[key], child, true, source) else JsonNode(null, child, false, source)
    }

    fun has(key: String): Boolean = (value as? Map<*, *>)?.containsKey(key) == true

    fun keys(): List<String> {
        val map = value as? Map<*, *> ?: fail("an object")
        return map.keys.map { it.toString() }
    }

    fun list(): List<JsonNode> {
        val list = value as? List<*> ?: fail("an array")
        return list.mapIndexed { i, v -> JsonNode(v, "$path[$i]", true, source) }
    }

    fun string(): String = value as? String ?: fail("a string")

    fun stringOr(default: String?): String? = if (value == null) default else string()

    fun bool(): Boolean = value as? Boolean ?: fail("true or false")

    fun boolOr(default: Boolean): Boolean = if (value == null) default else bool()

    fun double(): Double {
        val v = value
        return when (v) {
            is Long -> v.toDouble()
            is Double -> v
            else -> fail("a number")
        }
    }

    fun int(): Int {
        val v = value
        if (v is Long && v >= Int.MIN_VALUE && v <= Int.MAX_VALUE) return v.toInt()
        if (v is Double && v == Math.floor(v) && Math.abs(v) <= Int.MAX_VALUE) return v.toInt()
        fail("an integer")
    }

    fun intOr(default: Int?): Int? = if (value == null) default else int()

    fun ints(): IntArray = list().map { it.int() }.toIntArray()

    fun doubles(): DoubleArray = list().map { it.double() }.toDoubleArray()

    companion object {
        fun parse(text: String, source: String): JsonNode {
            val value = try {
                Json.parse(text)
            } catch (e: JsonException) {
                throw ContractException("$source: ${e.message}")
            }
            return JsonNode(value, "", true, source)
        }

        fun describe(v: Any?): String = when (v) {
            null -> "null"
            is String -> "\"$v\""
            is Map<*, *> -> "an object"
            is List<*> -> "an array"
            else -> v.toString()
        }
    }
}
