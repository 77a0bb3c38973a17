module symtruth

go 1.19
