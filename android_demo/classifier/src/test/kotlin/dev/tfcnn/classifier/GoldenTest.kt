package dev.tfcnn.classifier

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.nio.ByteOrder

/**
 * Replays what `tfcnn export --android` recorded with the real model in Python: the Kotlin
 * preprocessing must produce exactly the bytes LiteRT was fed, and the Kotlin postprocessing must
 * rank LiteRT's raw outputs exactly as the exporter did. No model is needed here.
 */
class GoldenTest {
    private val golden = Golden.load()

    @Test
    fun goldenHasSamples() {
        assertTrue("${golden.where} has no samples", golden.samples.isNotEmpty())
        assertEquals(golden.contract.output.numClasses, golden.labels.size)
    }

    @Test
    fun contractMatchesTheRecordedModelTensors() {
        val issues = ModelSpec.check(golden.contract, golden.labels, golden.input, golden.output, golden.modelSha256)
        if (issues.isNotEmpty()) fail("${golden.where}: " + issues.joinToString("; "))
    }

    @Test
    fun preprocessingReproducesThePythonBytes() {
        val pre = Preprocessor(golden.contract.input, golden.input, ByteOrder.LITTLE_ENDIAN)
        for (s in golden.samples) {
            val w = s["width"].int()
            val h = s["height"].int()
            assertEquals("sample ${s["index"].int()} size", golden.contract.input.width, w)
            assertEquals("sample ${s["index"].int()} size", golden.contract.input.height, h)
            val got = pre.toInputBytes(golden.argb(s), w, h)
            val want = golden.inputBytes(s)
            assertEquals("sample ${s["index"].int()}: input tensor length", want.size, got.size)
            for (i in want.indices) {
                if (want[i] != got[i]) {
                    fail("sample ${s["index"].int()}: input byte $i is ${got[i].toInt() and 0xFF} but Python fed LiteRT ${want[i].toInt() and 0xFF} (${golden.input.dtype})")
                }
            }
        }
    }

    @Test
    fun postprocessingReproducesTheExpectedTopK() {
        val post = Postprocessor(golden.contract.output, golden.output, golden.labels, ByteOrder.LITTLE_ENDIAN)
        for (s in golden.samples) {
            val top = post.topK(golden.outputBytes(s), golden.k)
            assertTopK(s, top)
        }
    }

    @Test
    fun classifierEndToEndOnRecordedOutputs() {
        val recordings = HashMap<String, ByteArray>()
        for (s in golden.samples) recordings[s["input_b64"].string()] = golden.outputBytes(s)
        val engine = RecordedEngine(golden.input, golden.output, recordings)
        ImageClassifier(golden.contract, golden.labels, engine, golden.modelSha256, ByteOrder.LITTLE_ENDIAN).use { classifier ->
            for (s in golden.samples) {
                val result = classifier.classify(golden.argb(s), s["width"].int(), s["height"].int(), golden.k)
                assertTopK(s, result.top)
            }
        }
        assertEquals(golden.samples.size, engine.calls)
    }

    private fun assertTopK(s: JsonNode, top: List<Prediction>) {
        val want = s["top_k"].list()
        val id = "sample ${s["index"].int()}"
        assertEquals("$id: top-k length", want.size, top.size)
        for (i in want.indices) {
            val expected = "#${want[i]["index"].int()} ${want[i]["label"].string()}"
            assertEquals("$id: rank $i (got $top)", expected, "#${top[i].index} ${top[i].label}")
            assertEquals("$id: rank $i score", want[i]["score"].double(), top[i].score, 1e-9)
        }
    }
}
