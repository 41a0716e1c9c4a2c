// The Hopwire Android app: one module, :app. The Kotlin bindings and the
// shared controller are compiled into it from ffi/bindings/kotlin and
// mobile/shared (see app/build.gradle.kts), not copied.

pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "hopwire-android"
include(":app")
