# sources: every .c file under runtime/, http/, tests/ and tools/ is in a
# target's source list (the build lists sources by hand, no file(GLOB)), and
# every tests/checks/*.cmake is included by tests/CMakeLists.txt or named by
# one that is (a `cmake -P` script), so a file added by a merge cannot sit
# unbuilt or unrun. The lists are read here, at
# configure time, from every target of the tree; sources_check.cmake globs the
# tree when the test runs. Skipped: a directory with a CMakeLists.txt of its
# own that this configuration did not add (tools/ without IOLOOP_BUILD_TOOLS,
# runtime/tls/ without IOLOOP_TLS, tests/fuzz/ without IOLOOP_FUZZ,
# tests/consumer/, a separate project the install check builds).
function(ioloop_collect_sources dir out dirs_out)
  set(found ${${out}})
  set(dirs ${${dirs_out}} ${dir})
  get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
  foreach(target ${targets})
    get_target_property(srcs ${target} SOURCES)
    get_target_property(srcdir ${target} SOURCE_DIR)
    if(NOT srcs)
      continue()
    endif()
    foreach(src ${srcs})
      if(src MATCHES "^\\$<")
        continue()
      endif()
      if(NOT IS_ABSOLUTE "${src}")
        set(src "${srcdir}/${src}")
      endif()
      get_filename_component(src "${src}" ABSOLUTE)
      list(APPEND found "${src}")
    endforeach()
  endforeach()
  get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
  foreach(sub ${subdirs})
    ioloop_collect_sources(${sub} found dirs)
  endforeach()
  set(${out} ${found} PARENT_SCOPE)
  set(${dirs_out} ${dirs} PARENT_SCOPE)
endfunction()

set(ioloop_listed)
set(ioloop_added_dirs)
ioloop_collect_sources(${PROJECT_SOURCE_DIR} ioloop_listed ioloop_added_dirs)
# Suites listed in tests/CMakeLists.txt but not built here (TLS ones without IOLOOP_TLS).
foreach(suite ${IOLOOP_TEST_SUITES} ${IOLOOP_TEST_WHITEBOX_SUITES} ${IOLOOP_TEST_TLS_SUITES})
  list(APPEND ioloop_listed ${CMAKE_CURRENT_SOURCE_DIR}/${suite}.c)
endforeach()
# The checks included, and the scripts they name.
foreach(check ${IOLOOP_CHECKS} sources)
  set(file ${CMAKE_CURRENT_LIST_DIR}/${check}.cmake)
  list(APPEND ioloop_listed ${file})
  file(READ ${file} text)
  string(REGEX MATCHALL "[A-Za-z0-9_]+\\.(cmake|py)" named "${text}")
  foreach(name ${named})
    if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/${name})
      list(APPEND ioloop_listed ${CMAKE_CURRENT_LIST_DIR}/${name})
      if(name MATCHES "\\.py$") # and the modules it imports from here
        file(STRINGS ${CMAKE_CURRENT_LIST_DIR}/${name} imports REGEX "^import [A-Za-z0-9_]+")
        foreach(line ${imports})
          string(REGEX REPLACE "^import ([A-Za-z0-9_]+).*" "\\1.py" module "${line}")
          if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/${module})
            list(APPEND ioloop_listed ${CMAKE_CURRENT_LIST_DIR}/${module})
          endif()
        endforeach()
      endif()
    endif()
  endforeach()
endforeach()
list(REMOVE_DUPLICATES ioloop_listed)
string(REPLACE ";" "\n" ioloop_listed "${ioloop_listed}")
file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/listed_sources.txt "${ioloop_listed}\n")
set(ioloop_skip)
file(GLOB_RECURSE ioloop_cmakelists RELATIVE ${PROJECT_SOURCE_DIR}
     ${PROJECT_SOURCE_DIR}/runtime/CMakeLists.txt ${PROJECT_SOURCE_DIR}/http/CMakeLists.txt
     ${PROJECT_SOURCE_DIR}/tests/CMakeLists.txt ${PROJECT_SOURCE_DIR}/tools/CMakeLists.txt)
foreach(lists ${ioloop_cmakelists})
  get_filename_component(dir ${lists} DIRECTORY)
  if(NOT ${PROJECT_SOURCE_DIR}/${dir} IN_LIST ioloop_added_dirs)
    list(APPEND ioloop_skip ${dir})
  endif()
endforeach()
string(REPLACE ";" "|" ioloop_skip "${ioloop_skip}")
add_test(NAME sources.listed
  COMMAND ${CMAKE_COMMAND} -DROOT=${PROJECT_SOURCE_DIR} -DLISTED=${CMAKE_CURRENT_BINARY_DIR}/listed_sources.txt
          "-DSKIP=${ioloop_skip}" -P ${CMAKE_CURRENT_LIST_DIR}/sources_check.cmake)
set_tests_properties(sources.listed PROPERTIES TIMEOUT 60)
