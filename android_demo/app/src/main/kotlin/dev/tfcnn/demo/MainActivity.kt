package dev.tfcnn.demo

import android.content.ActivityNotFoundException
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ImageDecoder
import android.net.Uri
import android.os.Build
import android.os.Bundle
import android.view.View
import android.widget.Button
import android.widget.ImageButton
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import dev.tfcnn.classifier.Classification
import dev.tfcnn.classifier.ContractException
import dev.tfcnn.classifier.Contract
import dev.tfcnn.classifier.ImageClassifier
import dev.tfcnn.classifier.Labels
import dev.tfcnn.classifier.ModelMismatchException
import java.io.FileNotFoundException
import java.io.IOException
import java.util.Locale
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Pick or take a photo (or tap a bundled Fashion-MNIST sample), let the classifier core resize it
 * to the contract's size exactly as the Python side does (Pillow's bilinear, `input.fit`, alpha
 * over black: see `Resizer`), and show the top-3 labels and the inference time.
 *
 * Files are decoded at full resolution (up to [MAX_PIXELS]) and with straight alpha
 * (`inPremultiplied = false`), because Python decodes them that way: a pre-shrunk decode
 * (`inSampleSize`) or a premultiplied round trip would change the pixels the resize starts from.
 *
 * Model loading and inference run on one worker thread (the interpreter is not thread-safe). Any
 * problem with the assets — missing model, contract that does not match the model, unreadable
 * file — is shown on screen instead of crashing.
 */
class MainActivity : ComponentActivity() {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var classifier: ImageClassifier? = null // touched only on the worker thread
    private var loadProblem: String? = null // idem

    private lateinit var modelInfo: TextView
    private lateinit var problem: TextView
    private lateinit var preview: ImageView
    private lateinit var results: TextView
    private lateinit var timing: TextView

    private val pickPhoto = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri: Uri? ->
        if (uri != null) classify { decodeUri(uri) }
    }

    // The camera app's preview is an opaque, already small Bitmap, not a file: nothing to match.
    private val takePhoto = registerForActivityResult(ActivityResultContracts.TakePicturePreview()) { bitmap: Bitmap? ->
        if (bitmap != null) classify { Decoded(bitmap, bitmap) }
    }

    /** [pixels]: what the model gets (straight alpha, full size); [preview]: a drawable copy to show. */
    private class Decoded(val pixels: Bitmap, val preview: Bitmap, val note: String? = null)

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        modelInfo = findViewById(R.id.model_info)
        problem = findViewById(R.id.problem)
        preview = findViewById(R.id.preview)
        results = findViewById(R.id.results)
        timing = findViewById(R.id.timing)

        findViewById<Button>(R.id.pick).setOnClickListener {
            pickPhoto.launch(
                PickVisualMediaRequest.Builder()
                    .setMediaType(ActivityResultContracts.PickVisualMedia.ImageOnly)
                    .build()
            )
        }
        findViewById<Button>(R.id.camera).setOnClickListener {
            try {
                takePhoto.launch(null)
            } catch (e: ActivityNotFoundException) {
                showProblem("No camera app is available to take a photo; pick one instead.")
            }
        }
        val samples = sampleAssets()
        addSampleButtons(samples)
        worker.execute { loadModel() }
        samples.firstOrNull()?.let { first -> classify { decodeAsset(first) } }
    }

    override fun onDestroy() {
        worker.execute {
            classifier?.close()
            classifier = null
        }
        worker.shutdown()
        super.onDestroy()
    }

    // ------------------------------------------------------------------ model

    private class MissingAsset(val name: String) : Exception(name)

    private fun readAsset(name: String): ByteArray = try {
        assets.open(name).use { it.readBytes() }
    } catch (e: FileNotFoundException) {
        throw MissingAsset(name)
    }

    /** Runs on the worker: builds the classifier or records, in words, why it cannot. */
    private fun loadModel() {
        var info = ""
        loadProblem = try {
            val contract = Contract.parse(String(readAsset("contract.json"), Charsets.UTF_8), "contract.json")
            val labels = Labels.parse(String(readAsset("labels.txt"), Charsets.UTF_8))
            val modelFile = contract.android?.modelFile ?: "model.tflite"
            val modelBytes = readAsset(modelFile)
            val sha = ImageClassifier.sha256(modelBytes)
            val engine = LiteRtEngine.create(modelBytes, THREADS)
            val built = try {
                ImageClassifier(contract, labels, engine, sha)
            } catch (e: RuntimeException) {
                engine.close()
                throw e
            }
            classifier = built
            val input = engine.inputTensor
            info = String.format(
                Locale.US, "Model %s v%s (%s): input %s %s, %d classes, sha256 %s…",
                contract.modelName, contract.modelVersion ?: "?", contract.android?.variant ?: "tflite",
                input.dims, input.dtype, labels.size, sha.take(12)
            )
            null
        } catch (e: MissingAsset) {
            "${e.name} is missing from the app's assets. Run `tfcnn export RUN_DIR --android android_demo`, then rebuild and reinstall the app."
        } catch (e: ContractException) {
            "contract.json cannot be used: ${e.message}"
        } catch (e: ModelMismatchException) {
            "The model does not match contract.json: ${e.message}"
        } catch (e: IllegalArgumentException) {
            "LiteRT cannot load the model: ${e.message}"
        } catch (e: IOException) {
            "Could not read the app's assets: ${e.message}"
        } catch (e: Throwable) {
            "Could not load the model: ${e.javaClass.simpleName}: ${e.message}"
        }
        val message = loadProblem
        runOnUiThread {
            if (message == null) {
                modelInfo.text = info
            } else {
                modelInfo.text = getString(R.string.app_name)
                showProblem(message)
            }
        }
    }

    // ------------------------------------------------------------------ classification

    /** Decode (off the UI thread), classify (the core resizes), show. */
    private fun classify(load: () -> Decoded?) {
        worker.execute {
            val c = classifier
            if (c == null) {
                val why = loadProblem ?: getString(R.string.loading)
                runOnUiThread { showProblem(why) }
                return@execute
            }
            try {
                val image = load() ?: throw IOException("the image could not be decoded")
                val result = classifyBitmap(c, image.pixels)
                runOnUiThread { show(image, result) }
            } catch (e: Exception) {
                runOnUiThread { showProblem("Could not classify this image: ${e.message}") }
            } catch (e: OutOfMemoryError) {
                runOnUiThread { showProblem("This image is too large to decode on this device.") }
            }
        }
    }

    private fun classifyBitmap(c: ImageClassifier, bitmap: Bitmap): Classification {
        val software = if (Build.VERSION.SDK_INT >= 26 && bitmap.config == Bitmap.Config.HARDWARE) {
            bitmap.copy(Bitmap.Config.ARGB_8888, false)
        } else {
            bitmap
        }
        val argb = if (software.config == Bitmap.Config.ARGB_8888) software else software.copy(Bitmap.Config.ARGB_8888, false)
        val width = argb.width
        val height = argb.height
        // The contract's resize (Pillow's bilinear, input.fit, alpha over black) is the classifier
        // core's, reading the bitmap one row at a time: Android's own filtering is never used.
        return c.classify(width, height, TOP_K) { y, row -> argb.getPixels(row, 0, width, 0, y, width, 1) }
    }

    private fun show(image: Decoded, result: Classification) {
        problem.visibility = View.GONE
        preview.setImageBitmap(image.preview)
        results.text = result.top.mapIndexed { i, p ->
            String.format(Locale.US, "%d. %-14s %5.1f%%", i + 1, p.label, 100 * p.score)
        }.joinToString("\n") + (image.note?.let { "\n$it" } ?: "")
        timing.text = String.format(Locale.US, "Inference: %.2f ms (LiteRT, CPU, %d threads)", result.inferenceMillis, THREADS)
    }

    private fun showProblem(message: String) {
        problem.text = message
        problem.visibility = View.VISIBLE
    }

    // ------------------------------------------------------------------ images

    private fun sampleAssets(): List<String> =
        (assets.list("samples") ?: emptyArray<String>()).filter { it.endsWith(".png") }.sorted().map { "samples/$it" }

    private fun addSampleButtons(samples: List<String>) {
        val row = findViewById<LinearLayout>(R.id.samples)
        val size = (72 * resources.displayMetrics.density).toInt()
        for (path in samples) {
            val thumb = decodeAsset(path)?.preview ?: continue
            val button = ImageButton(this)
            button.setImageBitmap(Bitmap.createScaledBitmap(thumb, size, size, false)) // display only
            button.contentDescription = path.substringAfterLast('/')
            button.setOnClickListener { classify { decodeAsset(path) } }
            row.addView(button, LinearLayout.LayoutParams(size + size / 4, size + size / 4))
        }
    }

    /** An opaque bitmap can be drawn as decoded; one with alpha is decoded a second time, premultiplied, to show. */
    private fun decodeAsset(path: String): Decoded? {
        try {
            val pixels = assets.open(path).use { BitmapFactory.decodeStream(it, null, straightOptions(1)) } ?: return null
            if (!pixels.hasAlpha()) return Decoded(pixels, pixels)
            val preview = assets.open(path).use { BitmapFactory.decodeStream(it, null, previewOptions(1)) } ?: return null
            return Decoded(pixels, preview)
        } catch (e: IOException) {
            return null
        }
    }

    /** ARGB_8888 with straight alpha, as the file (and Pillow) has it; such bitmaps cannot be drawn. */
    private fun straightOptions(sample: Int) = BitmapFactory.Options().apply {
        inPreferredConfig = Bitmap.Config.ARGB_8888
        inPremultiplied = false
        inSampleSize = sample
    }

    private fun previewOptions(sample: Int) = BitmapFactory.Options().apply {
        inPreferredConfig = Bitmap.Config.ARGB_8888
        inSampleSize = sample
    }

    /** The smallest power-of-two subsampling that keeps a decode under MAX_PIXELS (1 for photos up to 16 MP). */
    private fun sampleFor(width: Int, height: Int, maxPixels: Long): Int {
        var sample = 1
        while (width.toLong() / sample * (height.toLong() / sample) > maxPixels) sample *= 2
        return sample
    }

    private fun subsampledNote(sample: Int): String? = if (sample == 1) null else
        "Decoded at 1/$sample size (over ${MAX_PIXELS / 1_000_000} MP): Python decodes full size, so scores may differ slightly."

    /**
     * Full resolution, straight alpha. ImageDecoder (API 28+) applies the EXIF orientation as
     * Pillow's exif_transpose does; BitmapFactory (API 24-27) does not, so rotated camera JPEGs
     * differ from Python there.
     */
    private fun decodeUri(uri: Uri): Decoded? {
        if (Build.VERSION.SDK_INT >= 28) {
            val source = ImageDecoder.createSource(contentResolver, uri)
            var sample = 1
            val pixels = ImageDecoder.decodeBitmap(source) { decoder, info, _ ->
                decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
                decoder.isUnpremultipliedRequired = true
                sample = sampleFor(info.size.width, info.size.height, MAX_PIXELS)
                if (sample > 1) decoder.setTargetSampleSize(sample)
            }
            val preview = ImageDecoder.decodeBitmap(ImageDecoder.createSource(contentResolver, uri)) { decoder, info, _ ->
                decoder.setTargetSampleSize(sampleFor(info.size.width, info.size.height, PREVIEW_PIXELS))
            }
            return Decoded(pixels, preview, subsampledNote(sample))
        }
        val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
        contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, bounds) }
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) return null
        val sample = sampleFor(bounds.outWidth, bounds.outHeight, MAX_PIXELS)
        val pixels = contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, straightOptions(sample)) } ?: return null
        val previewSample = sampleFor(bounds.outWidth, bounds.outHeight, PREVIEW_PIXELS)
        val preview = contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, previewOptions(previewSample)) } ?: return null
        return Decoded(pixels, preview, subsampledNote(sample))
    }

    companion object {
        private const val TOP_K = 3
        private const val THREADS = 2
        private const val MAX_PIXELS = 16_000_000L // a 12 MP photo decodes whole: 48 MB, read row by row
        private const val PREVIEW_PIXELS = 1_000_000L
    }
}
