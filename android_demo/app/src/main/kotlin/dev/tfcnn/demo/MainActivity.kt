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
 * Pick or take a photo (or tap a bundled Fashion-MNIST sample), resize it to the contract's size
 * with bilinear filtering, and show the top-3 labels and the inference time.
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

    private val takePhoto = registerForActivityResult(ActivityResultContracts.TakePicturePreview()) { bitmap: Bitmap? ->
        if (bitmap != null) classify { bitmap }
    }

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

    /** Decode (off the UI thread), resize with bilinear filtering, classify, show. */
    private fun classify(load: () -> Bitmap?) {
        worker.execute {
            val c = classifier
            if (c == null) {
                val why = loadProblem ?: getString(R.string.loading)
                runOnUiThread { showProblem(why) }
                return@execute
            }
            try {
                val bitmap = load() ?: throw IOException("the image could not be decoded")
                val result = classifyBitmap(c, bitmap)
                runOnUiThread { show(bitmap, result) }
            } catch (e: Exception) {
                runOnUiThread { showProblem("Could not classify this image: ${e.message}") }
            }
        }
    }

    private fun classifyBitmap(c: ImageClassifier, bitmap: Bitmap): Classification {
        val w = c.inputWidth
        val h = c.inputHeight
        val software = if (Build.VERSION.SDK_INT >= 26 && bitmap.config == Bitmap.Config.HARDWARE) {
            bitmap.copy(Bitmap.Config.ARGB_8888, false)
        } else {
            bitmap
        }
        // The contract's resize method: bilinear, i.e. createScaledBitmap with filter = true.
        val scaled = Bitmap.createScaledBitmap(software, w, h, true)
        val argb = if (scaled.config == Bitmap.Config.ARGB_8888) scaled else scaled.copy(Bitmap.Config.ARGB_8888, false)
        val pixels = IntArray(w * h)
        argb.getPixels(pixels, 0, w, 0, 0, w, h)
        return c.classify(pixels, w, h, TOP_K)
    }

    private fun show(bitmap: Bitmap, result: Classification) {
        problem.visibility = View.GONE
        preview.setImageBitmap(bitmap)
        results.text = result.top.mapIndexed { i, p ->
            String.format(Locale.US, "%d. %-14s %5.1f%%", i + 1, p.label, 100 * p.score)
        }.joinToString("\n")
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
            val thumb = decodeAsset(path) ?: continue
            val button = ImageButton(this)
            button.setImageBitmap(Bitmap.createScaledBitmap(thumb, size, size, false))
            button.contentDescription = path.substringAfterLast('/')
            button.setOnClickListener { classify { decodeAsset(path) } }
            row.addView(button, LinearLayout.LayoutParams(size + size / 4, size + size / 4))
        }
    }

    private fun decodeAsset(path: String): Bitmap? = try {
        assets.open(path).use { BitmapFactory.decodeStream(it, null, argbOptions()) }
    } catch (e: IOException) {
        null
    }

    private fun argbOptions() = BitmapFactory.Options().apply { inPreferredConfig = Bitmap.Config.ARGB_8888 }

    /** Photos can be large: decode at most ~MAX_SIDE pixels per side; ImageDecoder also applies EXIF rotation. */
    private fun decodeUri(uri: Uri): Bitmap? {
        if (Build.VERSION.SDK_INT >= 28) {
            val source = ImageDecoder.createSource(contentResolver, uri)
            return ImageDecoder.decodeBitmap(source) { decoder, info, _ ->
                decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
                var sample = 1
                while (info.size.width / (2 * sample) >= MAX_SIDE && info.size.height / (2 * sample) >= MAX_SIDE) sample *= 2
                decoder.setTargetSampleSize(sample)
            }
        }
        val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
        contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, bounds) }
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) return null
        var sample = 1
        while (bounds.outWidth / (2 * sample) >= MAX_SIDE && bounds.outHeight / (2 * sample) >= MAX_SIDE) sample *= 2
        val options = argbOptions().apply { inSampleSize = sample }
        return contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, options) }
    }

    companion object {
        private const val TOP_K = 3
        private const val THREADS = 2
        private const val MAX_SIDE = 1024
    }
}
