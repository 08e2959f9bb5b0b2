package dev.tfcnn.classifier

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class JsonTest {
    @Test
    fun parsesEveryKindOfValue() {
        val v = Json.parse("""{"a": [1, -2.5e2, 0.125, true, false, null], "b": {"c": "x"}, "d": []}""") as Map<*, *>
        assertEquals(listOf(1L, -250.0, 0.125, true, false, null), v["a"])
        assertEquals(mapOf("c" to "x"), v["b"])
        assertEquals(emptyList<Any>(), v["d"])
        assertEquals(listOf("a", "b", "d"), v.keys.toList())
    }

    @Test
    fun decodesStringEscapes() {
        val s = Json.parse("\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00\"")
        assertEquals("q\" b\\ s/ \b\u000C\n\r\t \u00e9 \uD83D\uDE00", s)
    }

    @Test
    fun keepsLargeIntegersAndExponents() {
        assertEquals(9007199254740993L, Json.parse("9007199254740993"))
        assertEquals(1e300, Json.parse("1E+300"))
        assertEquals(-0.0, Json.parse("-0.0"))
        assertEquals(0L, Json.parse(" 0 "))
        assertEquals(1.0E20, Json.parse("100000000000000000000"))
    }

    @Test
    fun rejectsMalformedInputWithPosition() {
        val bad = listOf("{\"a\" 1}", "[1,]", "01", "1.", "-", "\"abc", "\"\\x\"", "tru", "{} x", "[1 2]", "\"a\nb\"", "", "{\"a\":1,}", ".5", "\"\\u12g4\"")
        for (text in bad) {
            try {
                Json.parse(text)
                fail("accepted malformed JSON: $text")
            } catch (e: JsonException) {
                assertTrue(e.message.orEmpty(), e.message.orEmpty().contains("line 1 column") || e.message.orEmpty().contains("line 2 column"))
            }
        }
        try {
            Json.parse("{\n  \"a\": [1,\n  2,, 3]\n}")
            fail("accepted a double comma")
        } catch (e: JsonException) {
            assertTrue(e.message.orEmpty(), e.message.orEmpty().contains("line 3 column 5"))
        }
    }

    @Test
    fun nodeErrorsNameThePath() {
        val root = JsonNode.parse("""{"input": {"height": "28", "list": [1, "x"]}}""", "contract.json")
        try {
            root["input"]["height"].int()
            fail("a string height was accepted")
        } catch (e: ContractException) {
            assertEquals("contract.json: input.height must be an integer, got \"28\"", e.message)
        }
        try {
            root["input"]["width"].int()
            fail("a missing width was accepted")
        } catch (e: ContractException) {
            assertEquals("contract.json: input.width is missing", e.message)
        }
        try {
            root["input"]["list"].ints()
            fail("a string in an int list was accepted")
        } catch (e: ContractException) {
            assertEquals("contract.json: input.list[1] must be an integer, got \"x\"", e.message)
        }
        assertNull(root["nothing"]["deeper"].value)
    }
}
