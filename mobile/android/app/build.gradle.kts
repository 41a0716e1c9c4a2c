import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

/** `value` as a Java string literal, for a BuildConfig field. */
fun javaString(value: String): String = "\"" + value.replace("\\", "\\\\").replace("\"", "\\\"") + "\""

android {
    namespace = "net.hopwire.android"
    compileSdk = 35

    defaultConfig {
        applicationId = "net.hopwire.android"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"

        // The network to join: gradle properties (see gradle.properties),
        // read by HopwireVpnService.sessionConfig().
        buildConfigField("String", "HOPWIRE_BOOTSTRAP", javaString(providers.gradleProperty("hopwire.bootstrap").getOrElse("")))
        buildConfigField("String", "HOPWIRE_LEDGER", javaString(providers.gradleProperty("hopwire.ledger").getOrElse("")))

        // The ABIs libhopwire_ffi.so is built for. JNA's AAR also carries
        // x86; without this filter an x86 device would install the app and
        // then fail to load the library.
        ndk {
            abiFilters += listOf("arm64-v8a", "armeabi-v7a", "x86_64")
        }
    }

    buildFeatures {
        buildConfig = true
    }

    buildTypes {
        release {
            // JNA binds the generated bindings' native methods and
            // structures by reflection: shrinking would need keep rules for
            // com.sun.jna.** and net.hopwire.core.**. Off until someone
            // writes and tests them.
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    sourceSets {
        getByName("main") {
            // The generated bindings (package net.hopwire.core) and the
            // platform-neutral controller (net.hopwire.mobile), compiled in
            // place: the same sources the JVM tests run.
            kotlin.srcDirs("../../../ffi/bindings/kotlin", "../../shared")
            // libhopwire_ffi.so per ABI (arm64-v8a/, armeabi-v7a/,
            // x86_64/), written there by cargo-ndk.
            jniLibs.srcDirs("src/main/jniLibs")
        }
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

dependencies {
    // The bindings call the library through JNA; the AAR carries JNA's own
    // native part (libjnidispatch.so) per ABI.
    implementation("net.java.dev.jna:jna:5.13.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.10.1")
}
