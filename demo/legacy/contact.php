<?php
// Under PHP-FPM this URL names this file, so PHP-FPM runs it: router.php answers, as it
// does for every URL under `php -S`, which never runs this file.
require __DIR__ . '/router.php';
