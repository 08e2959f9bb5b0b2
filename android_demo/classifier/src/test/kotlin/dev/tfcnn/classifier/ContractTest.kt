package dev.tfcnn.classifier

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class ContractTest {
    @Test
    fun readsTheExportersContract() {
        val c = Contract.parse(contractJson(height = 28, width = 32, numClasses = 3))
        assertEquals(28, c.input.height)
        assertEquals(32, c.input.width)
        assertArrayEquals(intArrayOf(1, 28, 32, 3), c.input.shape)
        assertEquals("uint8", c.input.dtype)
        assertEquals("bilinear", c.input.resize)
        assertEquals(1, c.input.modelChannels)
        assertTrue(c.input.normalization.inGraph)
        assertEquals(listOf("cat", "dog", "bird"), c.labels)
        assertEquals(3, c.output.numClasses)
        assertEquals("tflite_int8", c.android!!.variant)
        val art = c.artifact()!!
        assertEquals("tflite/model_int8.tflite", art.file)
        assertNull(art.inputs[0].quantization)
        assertEquals(0.00390625, art.outputs[0].quantization!!.scale, 0.0)
        assertEquals(setOf("savedmodel", "tflite_int8"), c.artifacts.keys)
        assertEquals("unit", c.modelName)
        assertEquals(1, c.modelVersion)
    }

    @Test
    fun scaleZeroMeansNotQuantized() {
        val c = Contract.parse(contractJson(inputQuant = "{\"scale\": 0.0, \"zero_point\": 0}"))
        assertNull(c.artifact()!!.inputs[0].quantization)
    }

    @Test
    fun contractWithoutAndroidBlockParses() {
        val c = Contract.parse(contractJson(android = "null"))
        assertNull(c.android)
        assertNull(c.artifact())
    }

    @Test
    fun errorsNameTheField() {
        expect("contract.json: input.height must be an integer, got \"28\"") {
            Contract.parse(contractJson().replace("\"height\": 2,", "\"height\": \"28\","))
        }
        expect("contract.json: output.num_classes is missing") {
            Contract.parse(contractJson().replace("\"num_classes\": 3", "\"classes\": 3"))
        }
        expect("input.color_order is \"BGR\"") { Contract.parse(contractJson().replace("\"RGB\"", "\"BGR\"")) }
        expect("input.channels is 4") { Contract.parse(contractJson(channels = 4)) }
        expect("schema is \"tfcnn.contract/2\"") { Contract.parse(contractJson().replace("contract/1", "contract/2")) }
        expect("input.normalization.std[0] is 0") { Contract.parse(contractJson(inGraph = false, std = "[0]")) }
        expect("contract.json: invalid JSON at line") { Contract.parse(contractJson() + "}") }
        expect("contract.json: input.resize is \"bicubic\"") { Contract.parse(contractJson().replace("\"bilinear\"", "\"bicubic\"")) }
        expect("contract.json: input.fit is \"letterbox\"; the app supports stretch and center_crop") {
            Contract.parse(contractJson().replace("\"resize\": \"bilinear\",", "\"resize\": \"bilinear\", \"fit\": \"letterbox\","))
        }
        expect("contract.json: input.alpha is \"drop\"") {
            Contract.parse(contractJson().replace("\"resize\": \"bilinear\",", "\"resize\": \"bilinear\", \"alpha\": \"drop\","))
        }
    }

    @Test
    fun fitAndAlphaAreReadWithTheOldContractsDefaults() {
        val old = Contract.parse(contractJson())
        assertEquals(Fit.STRETCH, old.input.fit)
        assertEquals("over_black", old.input.alpha)
        val crop = Contract.parse(contractJson().replace("\"resize\": \"bilinear\",", "\"resize\": \"bilinear\", \"fit\": \"center_crop\", \"alpha\": \"over_black\","))
        assertEquals(Fit.CENTER_CROP, crop.input.fit)
        assertEquals(Fit.CENTER_CROP, crop.input.resizer().fit)
    }

    @Test
    fun labelsIgnoreTrailingBlankLines() {
        assertEquals(listOf("T-shirt/top", "Trouser"), Labels.parse("T-shirt/top\r\nTrouser\n\n"))
        assertEquals(listOf("a", "b"), Labels.parse("a\nb\n"))
        assertEquals(listOf("a", "", "b"), Labels.parse("a\n\nb"))
        assertFalse(Labels.parse("a\r\nb\r\n").any { it.endsWith("\r") })
    }

    private fun expect(fragment: String, block: () -> Unit) {
        try {
            block()
            fail("expected a ContractException containing: $fragment")
        } catch (e: ContractException) {
            assertTrue("'${e.message}' should contain '$fragment'", e.message.orEmpty().contains(fragment))
        }
    }
}
