package dev.tfcnn.classifier

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class ModelSpecTest {
    private val contract = Contract.parse(contractJson(height = 28, width = 28))
    private val labels = listOf("cat", "dog", "bird")
    private val input = TensorSpec("image", intArrayOf(1, 28, 28, 3), "uint8", null)
    private val output = TensorSpec("probabilities", intArrayOf(1, 3), "uint8", Quantization(0.00390625, 0))

    @Test
    fun matchingModelHasNoIssues() {
        assertEquals(emptyList<SpecIssue>(), ModelSpec.check(contract, labels, input, output, "ABC123"))
    }

    @Test
    fun inputSizeMismatchNamesHeightAndWidth() {
        val big = TensorSpec("image", intArrayOf(1, 32, 32, 3), "uint8", null)
        val issues = ModelSpec.check(contract, labels, big, output)
        assertEquals("input.height", issues[0].field)
        assertEquals("input.height, input.width: model input is 1x32x32x3 but contract.json says 1x28x28x3", issues[0].message)
        assertTrue(issues.any { it.field == "artifacts.tflite_int8.inputs[0].shape" })
    }

    @Test
    fun dtypeAndQuantizationMismatchesAreNamed() {
        val f32 = TensorSpec("image", intArrayOf(1, 28, 28, 3), "float32", null)
        val fields = ModelSpec.check(contract, labels, f32, TensorSpec("p", intArrayOf(1, 3), "uint8", Quantization(0.5, 3))).map { it.field }
        assertTrue(fields.toString(), fields.contains("input.dtype"))
        assertTrue(fields.toString(), fields.contains("artifacts.tflite_int8.inputs[0].dtype"))
        assertTrue(fields.toString(), fields.contains("artifacts.tflite_int8.outputs[0].quantization"))
    }

    @Test
    fun labelAndClassCountsMustAgree() {
        val four = TensorSpec("p", intArrayOf(1, 4), "uint8", Quantization(0.00390625, 0))
        val issues = ModelSpec.check(contract, labels, input, four)
        assertTrue(issues.toString(), issues.any { it.message == "output.num_classes: model output is 1x4 but contract.json says 3 classes" })
        assertTrue(issues.toString(), issues.any { it.message == "labels.txt has 3 labels but the model outputs 4 scores" })
        val renamed = ModelSpec.check(contract, listOf("cat", "dog", "horse"), input, output)
        assertEquals(listOf("labels.names"), renamed.map { it.field })
        assertTrue(renamed[0].message.contains("\"bird\" vs \"horse\""))
    }

    @Test
    fun staleModelIsCaughtBySha() {
        val issues = ModelSpec.check(contract, labels, input, output, "ffff000011112222")
        assertEquals(listOf("android.sha256"), issues.map { it.field })
    }

    @Test
    fun unknownVariantIsNamed() {
        val c = Contract.parse(contractJson(android = "{\"variant\": \"tflite_fp16\"}"))
        assertEquals(listOf("android.variant"), ModelSpec.check(c, labels, TensorSpec("i", intArrayOf(1, 2, 2, 3), "uint8", null), output).map { it.field })
    }

    @Test
    fun classifierRefusesAMismatchedModelWithEveryReason() {
        val engine = RecordedEngine(TensorSpec("image", intArrayOf(1, 32, 32, 3), "uint8", null), output, emptyMap())
        try {
            ImageClassifier(contract, listOf("cat", "dog"), engine)
            fail("a mismatched model was accepted")
        } catch (e: ModelMismatchException) {
            assertTrue(e.message.orEmpty(), e.message.orEmpty().startsWith("input.height, input.width: model input is 1x32x32x3 but contract.json says 1x28x28x3"))
            assertTrue(e.message.orEmpty(), e.message.orEmpty().contains("labels.txt has 2 labels"))
            assertTrue(e.message.orEmpty(), e.message.orEmpty().contains("tfcnn export RUN_DIR --android android_demo"))
        }
    }

    @Test
    fun classifierRunsTheEngineOnPreparedBytes() {
        val c = Contract.parse(contractJson())
        val tin = TensorSpec("image", intArrayOf(1, 2, 2, 3), "uint8", null)
        val px = intArrayOf(0xFF010203.toInt(), 0xFF040506.toInt(), 0xFF070809.toInt(), 0xFF0A0B0C.toInt())
        val key = java.util.Base64.getEncoder().encodeToString(ByteArray(12) { (it + 1).toByte() })
        val engine = RecordedEngine(tin, output, mapOf(key to byteArrayOf(10, (-56).toByte(), 46)))
        ImageClassifier(c, labels, engine).use { classifier ->
            assertEquals(2, classifier.inputWidth)
            val result = classifier.classify(px, 2, 2, k = 2)
            assertEquals(listOf("dog", "bird"), result.top.map { it.label })
            assertEquals(200.0 / 256, result.top[0].score, 0.0)
            assertTrue(result.inferenceMillis >= 0.0)
        }
        assertTrue(engine.closed)
        assertEquals(1, engine.calls)
    }
}
