import org.jetbrains.kotlin.gradle.dsl.JvmTarget
import org.jetbrains.kotlin.gradle.tasks.KotlinCompile

// Plain JVM Kotlin: everything that can be wrong (contract parsing, pixels -> tensor bytes,
// dequantization, top-k, model/contract checks) is unit-tested here without a device.
plugins {
    alias(libs.plugins.kotlin.jvm)
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

tasks.withType<KotlinCompile>().configureEach {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

dependencies {
    testImplementation(libs.junit)
}

tasks.test {
    // -Ptfcnn.golden.dir=... / -Ptfcnn.assets.dir=... / -Ptfcnn.export.dir=... reach the JUnit tests.
    val assets = rootProject.file("app/src/main/assets").absolutePath
    systemProperty("tfcnn.assets.dir", providers.gradleProperty("tfcnn.assets.dir").getOrElse(assets))
    for (key in listOf("tfcnn.golden.dir", "tfcnn.export.dir")) {
        providers.gradleProperty(key).orNull?.let { systemProperty(key, it) }
    }
    testLogging {
        events("failed")
        exceptionFormat = org.gradle.api.tasks.testing.logging.TestExceptionFormat.FULL
    }
}
